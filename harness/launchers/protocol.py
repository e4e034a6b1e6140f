"""What every launcher shares: the ``Launcher`` protocol (it takes a ``Job`` and hands back a
``JobRun``, both in ``harness.core.jobs``) and the worker's command line, defined once.

A crash, a signal, a timeout, or a job the launcher lost (its zygote died) is a :class:`JobRun`,
never an exception. The one exception a launcher raises is :class:`LauncherBroken`: it can run no
more jobs, and the run must stop (its results so far are kept; ``--resume`` continues).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from harness.core.jobs import Job, JobRun, signal_name
from harness.core.jobspec import rank_path, read_report, report_problem

STDERR_TAIL_BYTES = 3000

# ``python -m harness.worker ARGS``: the worker's command line, for every launcher.
WORKER_MODULE = ("-m", "harness.worker")


def worker_argv(python: str, *args: str) -> tuple[str, ...]:
    return (python, *WORKER_MODULE, *args)


def torchrun_argv(python: str, ranks: int, args: tuple[str, ...]) -> tuple[str, ...]:
    """The worker's command line under torchrun: ``ranks`` processes on this node, with a
    rendezvous on a free port of its own (``--standalone``), so parallel jobs never collide."""
    return (
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(ranks),
        *WORKER_MODULE,
        *args,
    )


def worker_args(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The worker's own arguments of a worker command line (``worker_argv``), else None."""
    if tuple(argv[1:3]) != WORKER_MODULE:
        return None
    return argv[3:]


class LauncherBroken(Exception):
    """The launcher can run no more jobs (a zygote that died twice); the message says why and
    what to do. Raised out of the run, unlike everything that happens to one job."""


def rank_failures(failed: list[tuple[int, int | None]], ranks: int) -> str | None:
    """``rank 1 of 3 was killed by SIGSEGV; rank 2 of 3 exited with code 1``, or None."""
    if not failed:
        return None
    described = []
    for rank, code in failed:
        if code is None:
            how = "was lost"
        elif code < 0:
            how = f"was killed by {signal_name(code)}"
        else:
            how = f"exited with code {code}"
        described.append(f"rank {rank} of {ranks} {how}")
    stopped = " (the other ranks were stopped)" if len(failed) < ranks else ""
    return "; ".join(described) + stopped


# torchrun's failure summary (torch.distributed.elastic's ChildFailedError), one entry per rank:
#   rank      : 1 (local_rank: 1)
#   exitcode  : -6 (pid: 1786)  (SIGABRT)
_TORCHRUN_RANK = re.compile(
    r"^\s*rank\s*:\s*(\d+) \(local_rank: \d+\)\n\s*exitcode\s*:\s*(-?\d+)", re.M
)


def torchrun_failures(log: str) -> list[tuple[int, int | None]]:
    """The ranks torchrun's failure summary names, with their exit codes: the root cause first
    (torchrun prints it last), then the others, less those torchrun itself stopped with SIGTERM
    after the first failure. Empty when the log holds no summary."""
    found = [(int(rank), int(code)) for rank, code in _TORCHRUN_RANK.findall(log)]
    if not found:
        return []
    root, others = found[-1], found[:-1]
    stopped = -signal.SIGTERM
    failed: list[tuple[int, int | None]] = [root]
    failed += [(rank, code) for rank, code in others if code != stopped and rank != root[0]]
    return failed


# Ports this process has handed out lately: never handed out again while another job may hold it.
_HANDED: collections.deque[int] = collections.deque(maxlen=512)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def rendezvous_ports(ephemeral: tuple[int, int] | None) -> range:
    """Where a job's rendezvous port is chosen: below the range the kernel hands client sockets
    from (``ip_local_port_range``), so that no connection another job opens can take it between
    the probe and the rank 0 that listens on it; the whole unprivileged range where the kernel's
    is not known, or leaves too little below it."""
    low = 10000
    if ephemeral is not None and ephemeral[0] - low >= 1000:
        return range(low, ephemeral[0])
    return range(1024, 65536)


def _ephemeral_range() -> tuple[int, int] | None:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def free_port() -> int:
    """A TCP port on the loopback, free a moment ago, for one job's rendezvous: drawn from
    :func:`rendezvous_ports`, probed, and not one this process handed out lately."""
    ports = rendezvous_ports(_ephemeral_range())
    for _ in range(200):
        port = random.choice(ports)
        if port in _HANDED:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED.append(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a crowded machine
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
    failed_ranks: str | None = None,
) -> JobRun:
    """What a launcher hands back once a job's process has ended (``started``: its monotonic
    start): the exit, the time, the tail of its log and its report, if it wrote one. For a
    distributed job, a rank that wrote no report counts as failed (named) unless the launcher
    already named the failed ranks."""
    if failed_ranks is None and job.ranks > 1 and lost is None and not timed_out:
        silent = [
            r for r in range(1, job.ranks) if read_report(rank_path(job.report_path, r)) is None
        ]
        if silent:
            failed_ranks = f"rank(s) {', '.join(map(str, silent))} of {job.ranks} wrote no report"
    tails = [tail(job.log_path)]
    if failed_ranks is not None:
        failed_ranks += rank_exceptions(job)
        tails += [f"--- rank {r} ---\n{tail(job.rank_log(r), 1000)}" for r in range(1, job.ranks)]
    report, problem = (None, None) if lost is not None else checked_report(job)
    return JobRun(
        name=job.name,
        returncode=returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        stderr_tail="\n".join(t for t in tails if t.strip()),
        report=report,
        lost=lost,
        failed_ranks=failed_ranks,
        report_problem=problem,
    )


def rank_exceptions(job: Job) -> str:
    """What each rank of a failed distributed job that wrote a crash report raised, as a
    one-process worker's failure says it (``; rank 1: ValueError: ...``); empty where none did."""
    said = []
    for index in range(job.ranks):
        report = read_report(rank_path(job.report_path, index))
        if report is not None and report.get("status") == "crashed":
            said.append(f"rank {index}: {report.get('exception_type')}: {report.get('message')}")
    return "".join(f"; {text}" for text in said)


def checked_report(job: Job) -> tuple[dict[str, Any] | None, str | None]:
    """The job's report and what is wrong with it: none written (None, None); not JSON, torn
    or not an object (None, why); or read, and checked against its role's types (report, why)."""
    try:
        text = job.report_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{job.report_path} cannot be read ({exc})"
    try:
        report = json.loads(text)
    except ValueError as exc:
        return None, f"{job.report_path} is not valid JSON ({exc}; {len(text)} bytes: torn?)"
    if not isinstance(report, dict):
        return None, f"{job.report_path} holds {type(report).__name__}, not a JSON object"
    return report, report_problem(report, job.role)


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
    for rank in range(max(1, job.ranks)):
        rank_path(job.report_path, rank).unlink(missing_ok=True)


def tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
