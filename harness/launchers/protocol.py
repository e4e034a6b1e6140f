"""What every launcher shares: the ``Job`` it is given, the ``JobRun`` it hands back, the
``Launcher`` protocol, and the worker's command line, defined once.

A crash, a signal, a timeout, or a job the launcher lost (its zygote died) is a :class:`JobRun`,
never an exception. The one exception a launcher raises is :class:`LauncherBroken`: it can run no
more jobs, and the run must stop (its results so far are kept; ``--resume`` continues).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.jobspec import read_report

STDERR_TAIL_BYTES = 3000

# ``python -m harness.worker ARGS``: the worker's command line, for every launcher.
WORKER_MODULE = ("-m", "harness.worker")


def worker_argv(python: str, *args: str) -> tuple[str, ...]:
    return (python, *WORKER_MODULE, *args)


def worker_args(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The worker's own arguments of a worker command line (``worker_argv``), else None."""
    if tuple(argv[1:3]) != WORKER_MODULE:
        return None
    return argv[3:]


class LauncherBroken(Exception):
    """The launcher can run no more jobs (a zygote that died twice); the message says why and
    what to do. Raised out of the run, unlike everything that happens to one job."""


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
    lost: str | None = None  # the launcher lost the job (its zygote died): why

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
        return (
            self.lost is None
            and not self.timed_out
            and self.returncode == 0
            and self.report is not None
        )

    def failure(self) -> str:
        """What went wrong, for a person: timeout, signal or exit code, and a missing report."""
        if self.lost is not None:
            return f"{self.name}: the launcher lost the job: {self.lost}"
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


def finished_run(
    job: Job,
    *,
    returncode: int | None,
    timed_out: bool,
    started: float,
    lost: str | None = None,
) -> JobRun:
    """What a launcher hands back once a job's process has ended (``started``: its monotonic
    start): the exit, the time, the tail of its log and its report, if it wrote one."""
    return JobRun(
        name=job.name,
        returncode=returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        stderr_tail=tail(job.log_path),
        report=None if lost is not None else read_report(job.report_path),
        lost=lost,
    )


def stopping_run(job: Job) -> JobRun:
    """A job asked for after the launcher was stopped (Ctrl-C): lost, never started."""
    return finished_run(
        job,
        returncode=None,
        timed_out=False,
        started=time.monotonic(),
        lost="the run is stopping; no new job starts",
    )


def prepare(job: Job) -> None:
    """Before a job starts: its log's folder exists and no stale report can be read as its own."""
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    job.report_path.unlink(missing_ok=True)


def tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
