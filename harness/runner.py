"""Starting worker processes: a small ``Launcher`` protocol and the spawn launcher.

Every job runs in a new session (its own process group), with stdin closed, stdout and stderr
captured to a file, and a timeout. Shutdown escalates: SIGTERM to the whole group, then SIGKILL
after a grace period. A crash, a signal or a timeout is a :class:`JobRun`, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.jobspec import read_report

STDERR_TAIL_BYTES = 3000


@dataclass(frozen=True, kw_only=True)
class Job:
    name: str  # the cell id or save key, for every message about this job
    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout_s: float
    log_path: Path  # stdout and stderr together
    report_path: Path
    gpus: tuple[int, ...] = ()  # the GPUs the job may see (for leases)


@dataclass(frozen=True, kw_only=True)
class JobRun:
    name: str
    returncode: int | None
    timed_out: bool
    duration_s: float
    stderr_tail: str
    report: dict[str, Any] | None

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0 and self.report is not None

    def failure(self) -> str:
        """What went wrong, for a person: timeout, signal or exit code, and a missing report."""
        if self.timed_out:
            what = f"timed out after {self.duration_s:.1f} s and was stopped"
        elif self.signal_name is not None:
            what = f"was killed by {self.signal_name}"
        elif self.returncode != 0:
            what = f"exited with code {self.returncode}"
        elif self.report is None:
            what = "exited 0 but wrote no usable report"
        else:
            return f"{self.name}: finished"
        crashed = self.report is not None and self.report.get("status") == "crashed"
        if crashed and self.report is not None:
            what += f" ({self.report.get('exception_type')}: {self.report.get('message')})"
        elif self.report is None and not self.timed_out:
            what += "; the child died before writing a usable report"
        return f"{self.name}: worker {what}"


class Launcher(Protocol):
    def launch(self, job: Job) -> JobRun: ...

    def stop_all(self) -> None: ...


@dataclass
class SpawnLauncher:
    """A fresh interpreter per job: the strongest isolation, the default for certification."""

    grace_s: float = 5.0
    _live: set[subprocess.Popen[bytes]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, job: Job) -> JobRun:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        job.report_path.unlink(missing_ok=True)
        started = time.monotonic()
        timed_out = False
        with open(job.log_path, "wb") as log:
            proc = subprocess.Popen(
                job.argv,
                env=dict(job.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            with self._lock:
                self._live.add(proc)
            try:
                proc.wait(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                shutdown_group(proc, self.grace_s)
            except BaseException:
                shutdown_group(proc, self.grace_s)
                raise
            finally:
                with self._lock:
                    self._live.discard(proc)
        return finished_run(job, returncode=proc.returncode, timed_out=timed_out, started=started)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._live)

    def stop_all(self) -> None:
        """Stop every running job (on Ctrl-C: the children are in their own sessions and do not
        receive the terminal's SIGINT)."""
        with self._lock:
            live = list(self._live)
        for proc in live:
            shutdown_group(proc, self.grace_s)


def shutdown_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process group, wait ``grace_s``, then SIGKILL it."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def finished_run(job: Job, *, returncode: int | None, timed_out: bool, started: float) -> JobRun:
    """What a launcher hands back once a job's process has ended (``started``: its monotonic
    start): the exit, the time, the tail of its log and its report, if it wrote one."""
    return JobRun(
        name=job.name,
        returncode=returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        stderr_tail=tail(job.log_path),
        report=read_report(job.report_path),
    )


def tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
