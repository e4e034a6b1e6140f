"""A worker job and how it ended: the ``Job`` a launcher is given and the ``JobRun`` it hands
back (a crash, a signal, a timeout or a lost job is a ``JobRun``, never an exception). Plain data:
the verdict reads a ``JobRun`` without knowing which launcher ran it."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.jobspec import rank_path


@dataclass(frozen=True, kw_only=True)
class Job:
    name: str  # the cell id or save key, for every message about this job
    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout_s: float
    log_path: Path  # stdout and stderr together
    report_path: Path
    gpus: tuple[int, ...] = ()  # the GPUs the job may see (for leases)
    ranks: int = 0  # 0: one plain process; N >= 1: a distributed job of N rank processes
    role: str = ""  # save or load: the report is checked against that role's types

    def rank_log(self, rank: int) -> Path:
        """Rank 0 logs to ``log_path``, the other ranks beside it (``load.rank1.log``)."""
        return rank_path(self.log_path, rank)


@dataclass(frozen=True, kw_only=True)
class JobRun:
    name: str
    returncode: int | None
    timed_out: bool
    duration_s: float
    stderr_tail: str
    report: dict[str, Any] | None  # rank 0's, for a distributed job
    lost: str | None = None  # the launcher lost the job (its zygote died): why
    failed_ranks: str | None = None  # a distributed job: which ranks failed, and how
    report_problem: str | None = None  # the report exists but cannot be used: why

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            return signal_name(self.returncode)
        return None

    @property
    def ok(self) -> bool:
        return (
            self.lost is None
            and self.failed_ranks is None
            and not self.timed_out
            and self.returncode == 0
            and self.report is not None
            and self.report_problem is None
        )

    def failure(self) -> str:
        """What went wrong, for a person: timeout, signal or exit code, and a missing report."""
        if self.lost is not None:
            return f"{self.name}: the launcher lost the job: {self.lost}"
        if self.failed_ranks is not None:
            return f"{self.name}: {self.failed_ranks}"
        if self.timed_out:
            what = f"timed out after {self.duration_s:.1f} s and was stopped"
        elif self.signal_name is not None:
            what = f"was killed by {self.signal_name}"
        elif self.returncode != 0:
            what = f"exited with code {self.returncode}"
        elif self.report_problem is not None:
            what = f"exited 0 but its report is unusable: {self.report_problem}"
        elif self.report is None:
            what = "exited 0 but wrote no report"
        else:
            return f"{self.name}: finished"
        crashed = self.report is not None and self.report.get("status") == "crashed"
        if crashed and self.report is not None:
            what += f" ({self.report.get('exception_type')}: {self.report.get('message')})"
        elif self.report_problem is not None and self.returncode != 0:
            what += f"; its report is unusable: {self.report_problem}"
        elif self.report is None and not self.timed_out and self.returncode != 0:
            what += "; the child died before writing a usable report"
        return f"{self.name}: worker {what}"


def signal_name(returncode: int) -> str:
    """``SIGSEGV`` for -11 (a returncode as ``subprocess`` reports a signal)."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
