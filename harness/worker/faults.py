"""Faults injected on purpose, for the harness's own tests: a worker, a rank or the zygote that
fails the way a GPU CI runner's processes fail, so the tests can prove each one ends as an
ERROR result naming the cell, the cause and the log, and that the run goes on.

Only the environment variable ``CKPT_MATRIX_FAULT`` turns a fault on (a scenario file cannot set
it): a JSON list of ``{"kind": ..., "match": TEXT, "role": "save"|"load"|"any", "rank": N}``,
each applying to the jobs whose cell id (a load) or save key (a save) contains ``match``, on rank
``rank`` only where given. Nothing here runs unless the variable is set.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VARIABLE = "CKPT_MATRIX_FAULT"

# When in a job each kind strikes: before its work, or after its report was written.
BEFORE = frozenset({"segv", "abort", "exit", "hang", "oom", "disk_full", "stdout_garbage"})
AFTER = frozenset({"no_report", "torn_report", "bad_json", "missing_field", "teardown_abort"})
ZYGOTE = frozenset({"zygote_dies", "zygote_garbage"})  # the zygote itself, at a matching request
KINDS = BEFORE | AFTER | ZYGOTE


@dataclass(frozen=True, kw_only=True)
class Fault:
    kind: str
    match: str
    role: str = "any"
    rank: int | None = None
    attempt: int | None = None  # 0: the first run of the cell; k: its k-th rerun

    def applies(self, name: str, role: str, where: str = "") -> bool:
        if self.match not in name or self.role not in ("any", role):
            return False
        if self.attempt is not None and self.attempt != attempt_of(where):
            return False
        return self.rank is None or self.rank == int(os.environ.get("RANK", "0"))


def attempt_of(where: str) -> int:
    """Which attempt a job's files belong to: reruns work in ``rerun-K`` folders."""
    found = re.search(r"[/\\]rerun-(\d+)[/\\]", where)
    return int(found.group(1)) if found else 0


def planned(environ: dict[str, str] | os._Environ[str] | None = None) -> list[Fault]:
    """The faults the environment asks for; a malformed value is an error (tests only)."""
    text = (os.environ if environ is None else environ).get(VARIABLE)
    if not text:
        return []
    entries = json.loads(text)
    faults = [Fault(**entry) for entry in entries]
    unknown = [fault.kind for fault in faults if fault.kind not in KINDS]
    if unknown:
        raise ValueError(f"{VARIABLE}: unknown fault kind(s) {unknown}; expected {sorted(KINDS)}")
    return faults


def find(name: str, role: str, kinds: frozenset[str], where: str) -> Fault | None:
    return next(
        (f for f in planned() if f.kind in kinds and f.applies(name, role, where)),
        None,
    )


def before(name: str, role: str, where: str = "") -> None:
    """Strike before the job's work, where a fault asks for it (``where``: its report path)."""
    fault = find(name, role, BEFORE, where)
    if fault is None:
        return
    if fault.kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault.kind == "abort":
        os.abort()
    elif fault.kind == "exit":
        os._exit(3)
    elif fault.kind == "hang":
        time.sleep(10**6)
    elif fault.kind == "oom":
        exhaust_memory()
    elif fault.kind == "disk_full":
        # writes past 4 KiB fail with EFBIG, as on a full disk (SIGXFSZ would kill instead)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    elif fault.kind == "stdout_garbage":
        os.write(1, b"\x00\xff{not json\n" * 100)


def exhaust_memory() -> None:
    """Cap the address space a little above what is mapped now, then allocate past it."""
    import torch

    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = mapped + (64 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.empty(1 << 30, dtype=torch.float64)  # 8 GiB: MemoryError or RuntimeError


def after(name: str, role: str, report_path: Path) -> None:
    """Strike once the report is written, where a fault asks for it."""
    fault = find(name, role, AFTER, str(report_path))
    if fault is None:
        return
    if fault.kind == "no_report":
        report_path.unlink(missing_ok=True)
    elif fault.kind == "torn_report":
        data = report_path.read_bytes()
        report_path.write_bytes(data[: len(data) // 2])
    elif fault.kind == "bad_json":
        report_path.write_text("{this is not json", encoding="utf-8")
    elif fault.kind == "missing_field":
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
        report.pop("tensors", None)
        report.pop("error_class", None)
        report_path.write_text(json.dumps(report), encoding="utf-8")
    elif fault.kind == "teardown_abort":
        os.abort()


def zygote_fault(args: list[str] | tuple[str, ...]) -> str | None:
    """The zygote's own fault for a start request whose spec matches: die, or answer garbage."""
    faults = [f for f in planned() if f.kind in ZYGOTE]
    if not faults or not args:
        return None
    try:
        spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = str(spec.get("cell_id") or spec.get("cell_key") or "")
    role = str(spec.get("role", ""))
    hit = next((f for f in faults if f.applies(name, role, str(args[0]))), None)
    return None if hit is None else hit.kind
