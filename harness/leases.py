"""GPU leases: jobs that use disjoint GPUs run at once; jobs that share a GPU take turns.

One lock file per GPU in a folder the run owns (shared by the CLI's threads and by pytest-xdist
workers). A job takes the locks of every GPU it may see, in ascending index order whatever its
visibility order, so two jobs can never each hold a GPU the other waits for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.runner import Job, JobRun, Launcher


@dataclass(frozen=True)
class GpuLeases:
    folder: Path

    @contextlib.contextmanager
    def hold(self, gpus: Iterable[int]) -> Iterator[None]:
        ordered = sorted(set(gpus))
        if ordered:
            self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for index in ordered:
                stack.enter_context(FileLock(str(self.folder / f"gpu{index}.lock")))
            yield


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
