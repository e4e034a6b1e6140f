"""GPU leases: jobs that use disjoint GPUs run at once; jobs that share a GPU take turns.

One lock file per GPU slot in a folder the run owns (shared by the CLI's threads and by
pytest-xdist workers). A GPU has ``slots`` of them (default 1: a job has the GPU to itself; more
lets that many small jobs share it, e.g. a machine with one GPU and many cores). A job takes a
slot of every GPU it may see, in ascending index order whatever its visibility order, so two jobs
can never each hold a GPU the other waits for: ordered acquisition of counting semaphores cannot
deadlock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.core.errors import ConfigError
from harness.core.jobs import Job, JobRun
from harness.launchers.protocol import Launcher

POLL_S = 0.05  # how often a job waiting for one of several slots looks again


@dataclass(frozen=True)
class GpuLeases:
    folder: Path
    slots: int = 1

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigError(f"GPU slots {self.slots}: must be at least 1 (jobs per GPU at once)")

    def lock_path(self, gpu: int, slot: int) -> Path:
        return self.folder / (f"gpu{gpu}.lock" if slot == 0 else f"gpu{gpu}-slot{slot}.lock")

    @contextlib.contextmanager
    def hold(self, gpus: Iterable[int]) -> Iterator[None]:
        ordered = sorted(set(gpus))
        if ordered:
            self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for index in ordered:
                stack.callback(self._one_slot(index).release)
            yield

    def _one_slot(self, gpu: int) -> FileLock:
        """A held lock of one of the GPU's slots; waits until one is free."""
        if self.slots == 1:
            lock = FileLock(str(self.lock_path(gpu, 0)))
            lock.acquire()
            return lock
        locks = [FileLock(str(self.lock_path(gpu, slot))) for slot in range(self.slots)]
        while True:
            for lock in locks:
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                return lock
            time.sleep(POLL_S)


@dataclass
class LeasedLauncher:
    """Runs each job while holding the leases of the GPUs it may see."""

    inner: Launcher
    leases: GpuLeases

    def launch(self, job: Job) -> JobRun:
        with self.leases.hold(job.gpus):
            return self.inner.launch(job)

    def stop_all(self) -> None:
        self.inner.stop_all()
