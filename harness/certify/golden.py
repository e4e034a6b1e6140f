"""A team's own checkpoints as certification cells: ``golden record`` loads each file in a worker
and keeps every tensor's digest; ``golden verify`` loads it again (under another torch, driver or
GPUs) and compares bitwise.

Both write ordinary results files: one line per file, a cell ``golden=PATH`` of recipe
``golden``, so ``diff``, ``report``, ``merge`` and ``nox -s certify`` read them unchanged. A
recording is itself the record that ``verify`` reads (each PASS line's ``observed``).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.axes import Format, Layout
from harness.core.cell import Cell, Visibility
from harness.core.devices import DeviceMap, cuda_index
from harness.core.errors import UserError
from harness.core.jobs import Job, JobRun
from harness.core.jobspec import GoldenSpec
from harness.core.oracle import Expectation
from harness.core.outcomes import Outcome
from harness.core.recipes import GOLDEN
from harness.core.results import CellResult, ResultsFile, read_results
from harness.inspect.dcp_dir import METADATA
from harness.inspect.pickles import runs_code
from harness.inspect.safetensors_index import checkpoint_files, indexes_in
from harness.launchers.protocol import Launcher
from harness.run.environment import describe, torch_environment
from harness.run.inventory import Inventory
from harness.run.jobs import JobFactory
from harness.run.options import RunOptions
from harness.run.runner import leased_launcher

NAMES_SHOWN = 6
EXPECTED = Expectation(
    error=None,
    reason="loads with its format's safe loader, every tensor bitwise as recorded",
    tensor_device="as recorded",
)


class GoldenError(UserError):
    """Bad input to ``golden``: the message names the path or file and the fix."""


AUTO, AS_SAVED = "auto", "as-saved"


def map_choice(value: str, where: str = "--map-location") -> str:
    """``golden record --map-location``: ``auto`` (where saved if this machine has every saved
    device, else the CPU, as the matrix falls back), ``cpu``, ``cuda:K`` or ``as-saved``."""
    if value in (AUTO, AS_SAVED, "cpu") or cuda_index(value) is not None:
        return value
    raise GoldenError(
        f"{where} {value!r}: give auto (the default: where saved when this machine has every "
        "saved device, else cpu), cpu, cuda:K or as-saved"
    )


def recorded_choice(record: dict[str, Any]) -> str:
    """The --map-location a recording's file was loaded with; a recording made before the
    option says only what it used: cpu stays cpu, the rest was auto."""
    choice = record.get("map_choice")
    if isinstance(choice, str) and choice:
        return choice
    return "cpu" if record.get("map_location") == "cpu" else AUTO


def verify_out(recording: Path) -> Path:
    """``golden verify``'s default output: ``<recording>-verify.jsonl`` beside the recording, or
    the first of ``-verify-2``, ``-verify-3``... that does not exist, so a verification run again
    never replaces an earlier one (``--out`` with ``--overwrite`` does that)."""
    stem = recording.name.removesuffix(".jsonl").removesuffix(".json")
    candidate = recording.with_name(f"{stem}-verify.jsonl")
    number = 1
    while candidate.exists():
        number += 1
        candidate = recording.with_name(f"{stem}-verify-{number}.jsonl")
    return candidate


def golden_files(paths: Sequence[Path]) -> list[Path]:
    """The files to certify: each path given, and every file under a folder given, sorted, each
    once. A folder holding ``.metadata`` is one DCP checkpoint; a folder holding a
    ``*.safetensors.index.json`` (and no ``.metadata``) is one sharded safetensors checkpoint,
    its index and shards one cell (each index its own where it holds several), the JSON files
    ``save_pretrained`` writes beside them (config.json) its configuration, not cells; the
    folder's other files and folders are cells as anywhere."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise GoldenError(f"{path}: no such file or folder; give checkpoint files or folders")
        if path.is_file() or (path / METADATA).is_file():
            found.append(path)
            continue
        sharded: set[Path] = set()  # the files a sharded checkpoint's cell stands for
        walked: list[Path] = []
        for child in [path, *sorted(path.rglob("*"))]:
            if any((parent / METADATA).is_file() for parent in child.parents):
                continue  # inside a DCP checkpoint
            if child.is_dir() and (child / METADATA).is_file():
                walked.append(child)
            elif child.is_dir() and (indexes := indexes_in(child)):
                cells = [child] if len(indexes) == 1 else indexes
                walked += cells
                sharded |= {f for index in indexes for f in checkpoint_files(index)}
                sharded |= {f for f in child.glob("*.json") if f.is_file()} - set(cells)
            elif child.is_file() and child.name != METADATA and child not in sharded:
                walked.append(child)
        found += sorted(walked)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise GoldenError(f"no files under {', '.join(map(str, paths))}")
    return unique


def golden_cell(label: str, visibility: Visibility) -> Cell:
    return Cell(
        model=label,
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=Format.GOLDEN,
        recipe=GOLDEN,
        load_visibility=visibility,
    )


def recorded(results: ResultsFile) -> list[CellResult]:
    """The golden cells of a recording; refuses a results file that holds none."""
    cells = [result for result in results.results if result.cell.recipe == GOLDEN]
    if not cells:
        raise GoldenError(
            f"{results.path} holds no golden cells; give the file `ckpt-matrix golden record` wrote"
        )
    return cells


@dataclass(frozen=True, kw_only=True)
class GoldenRunner:
    factory: JobFactory
    launcher: Launcher
    visibility: Visibility
    safe_globals: tuple[str, ...] = ()
    map_location: str = AUTO  # record's choice; verify takes each file's recording's

    def job(self, label: str, path: Path, record: dict[str, Any] | None) -> Job:
        cell = golden_cell(label, self.visibility)
        folder = self.factory.workdir / "golden" / hashlib.sha256(label.encode()).hexdigest()[:16]
        spec = GoldenSpec(
            label=label,
            path=str(path),
            report_path=str(folder / "report.json"),
            safe_globals=self.safe_globals,
            expected_sha256=(record or {}).get("sha256", ""),
            # verify loads as the recording chose, so devices compare under the same policy
            map_location=self.map_location if record is None else recorded_choice(record),
        )
        return self.factory.spec_job(cell.id, spec, folder / "golden", self.visibility)

    def record(self, label: str, path: Path) -> CellResult:
        started = time.monotonic()
        run = self.launcher.launch(self.job(label, path, None))
        outcome, reason, observed = judge_record(label, path, run)
        return self._result(label, outcome, reason, observed, run, started)

    def verify(self, before: CellResult, base: Path) -> CellResult:
        started = time.monotonic()
        label = before.cell.model
        path = resolve(label, base)
        if before.outcome is not Outcome.PASS or before.observed is None:
            said = (
                f"`golden record` ended {before.outcome}: "
                f"{before.reason.removeprefix(f'golden={label}: ')}"
            )
            if before.outcome is Outcome.SKIP:
                return self._result(label, Outcome.SKIP, said, before.observed, None, started)
            return self._result(
                label, Outcome.ERROR, f"no record to compare with ({said})", None, None, started
            )
        tensors = before.observed.get("tensors")
        if not (isinstance(tensors, dict) and all(isinstance(t, dict) for t in tensors.values())):
            return self._result(
                label,
                Outcome.ERROR,
                "the recording's record of this file is malformed (its tensors are not "
                "records): record the file again",
                None,
                None,
                started,
            )
        run = self.launcher.launch(self.job(label, path, before.observed))
        outcome, reason, observed = judge_verify(label, before.observed, run)
        return self._result(label, outcome, reason, observed, run, started)

    def _result(
        self,
        label: str,
        outcome: Outcome,
        reason: str,
        observed: dict[str, Any] | None,
        run: JobRun | None,
        started: float,
    ) -> CellResult:
        error = None
        if run is not None and outcome is Outcome.ERROR:
            error = {"phase": "golden", "failure": run.failure(), "log_tail": run.stderr_tail}
        return CellResult(
            cell=golden_cell(label, self.visibility),
            outcome=outcome,
            expected=EXPECTED,
            reason=f"golden={label}: {reason}",
            observed=observed,
            error=error,
            duration_s=time.monotonic() - started,
        )


def resolve(label: str, base: Path) -> Path:
    """A recorded path: as given (from the current folder), else beside the recording."""
    path = Path(label)
    if path.exists() or path.is_absolute():
        return path
    beside = base / path
    return beside if beside.exists() else path


Judged = tuple[Outcome, str, dict[str, Any] | None]


def _failed(run: JobRun) -> Judged | None:
    """A worker that crashed, timed out or wrote no report: ERROR with what happened."""
    if run.ok and run.report is not None:
        return None
    tail = run.stderr_tail.strip().splitlines()[-3:]
    return Outcome.ERROR, f"{run.failure()}; log: {' | '.join(tail)}", None


def _not_loaded(report: dict[str, Any], path: str) -> Judged | None:
    """The statuses shared by record and verify where no tensor was read."""
    status = report.get("status")
    summary = {key: report.get(key) for key in ("path", "sha256", "format", "refused")}
    summary["path"] = path
    if status == "broken":
        return Outcome.ERROR, f"the file is broken: {report.get('message')}", summary
    if status == "dangerous":
        names = ", ".join(report.get("refused") or [])
        return (
            Outcome.ERROR,
            f"a {report.get('format')} file that names {names}, which run(s) code or commands "
            "when unpickled: never loaded; do not use this file (`ckpt-matrix inspect` shows it)",
            summary,
        )
    if status == "unreadable":
        return (
            Outcome.SKIP,
            f"not loaded: a weights_only load cannot read {report.get('message')}, whatever "
            "globals it allows (`ckpt-matrix inspect` says what to do)",
            summary,
        )
    if status == "needs_globals":
        names = ", ".join(report.get("refused") or [])
        return (
            Outcome.SKIP,
            f"not loaded: a weights_only load refuses {names}; if you trust them, record with "
            + " ".join(f"--safe-global {name}" for name in report.get("refused") or []),
            summary,
        )
    if status == "raised":
        return (
            Outcome.ERROR,
            f"the load raised {report.get('exception_type')} ({report.get('error_class')}): "
            f"{str(report.get('message'))[:500]}",
            summary,
        )
    return None


def _observed(report: dict[str, Any], path: str) -> dict[str, Any]:
    return {
        "path": path,
        **{
            key: report.get(key)
            for key in (
                "sha256",
                "bytes",
                "format",
                "map_location",
                "map_choice",
                "torch",
                "work_s",
                "memory",
                "tensors",
            )
        },
    }


def judge_record(label: str, path: Path, run: JobRun) -> Judged:
    failed = _failed(run)
    if failed is not None:
        return failed
    report = run.report or {}
    stopped = _not_loaded(report, label)
    if stopped is not None:
        return stopped
    tensors = report.get("tensors") or {}
    if not tensors:
        return (
            Outcome.ERROR,
            f"{path} holds no tensor: nothing to certify",
            _observed(report, label),
        )
    records = [t for t in tensors.values() if isinstance(t, dict)]
    saved = ", ".join(sorted({str(t.get("saved")) for t in records}))
    splits = Counter(str(t["split"]) for t in records if t.get("split"))
    if splits:  # a DCP directory's: how its chunks split each tensor
        counted = [f"{how} ({n} tensor{'s' * (n > 1)})" for how, n in sorted(splits.items())]
        saved += f" (split from the chunks: {'; '.join(counted)})"
    loaded = ", ".join(sorted({str(t.get("device")) for t in records}))
    return (
        Outcome.PASS,
        f"{len(tensors)} tensors recorded from a {report.get('format')} file of "
        f"{report.get('bytes')} bytes, saved at {saved}, loaded on {loaded} "
        f"(--map-location {report.get('map_choice')}: map_location={report.get('map_location')})",
        _observed(report, label),
    )


def judge_verify(label: str, record: dict[str, Any], run: JobRun) -> Judged:
    failed = _failed(run)
    if failed is not None:
        return failed
    report = run.report or {}
    changed = report.get("sha256") not in (None, record.get("sha256"))
    if report.get("status") == "broken":
        outcome, reason, summary = _not_loaded(report, label) or (Outcome.ERROR, "", None)
        also = "; its sha256 differs from the record: it changed since `golden record`"
        return outcome, reason + (also if changed else ""), summary
    if changed:
        return (
            Outcome.ERROR,
            f"sha256 {report.get('sha256')} differs from the recorded {record.get('sha256')}: "
            "the file changed since `golden record`, so this run proves nothing about torch; "
            f"restore the file, or record it again{what_changed(record, report)}",
            {"path": label, "sha256": report.get("sha256")},
        )
    stopped = _not_loaded(report, label)
    if stopped is not None:
        outcome, reason, summary = stopped
        if report.get("status") in ("raised", "needs_globals", "dangerous", "unreadable"):
            # it loaded when recorded: a load that raises or is refused now is a regression
            return Outcome.FAIL, f"{reason} (it loaded under torch {record.get('torch')})", summary
        return stopped
    problems = tensor_problems(
        record.get("tensors") or {},
        report.get("tensors") or {},
        same_policy=report.get("map_location") == record.get("map_location"),
    )
    observed = _observed(report, label)
    if problems:
        return Outcome.FAIL, "; ".join(problems), observed
    tensors = len(report.get("tensors") or {})
    moved = (
        ""
        if report.get("map_location") == record.get("map_location")
        else f" (map_location={report.get('map_location')} here, "
        f"{record.get('map_location')} when recorded)"
    )
    return (
        Outcome.PASS,
        f"{tensors} tensors bitwise equal to the record (torch {record.get('torch')} → "
        f"{report.get('torch')}){moved}",
        observed,
    )


def what_changed(record: dict[str, Any], report: dict[str, Any]) -> str:
    """Which tensors differ in a changed file that was loaded all the same (safetensors: bytes
    only); nothing for one that was not (a torch file)."""
    tensors = report.get("tensors")
    if report.get("status") != "changed" or not isinstance(tensors, dict):
        return ""
    problems = tensor_problems(
        record.get("tensors") or {},
        tensors,
        same_policy=report.get("map_location") == record.get("map_location"),
    )
    if not problems:
        return "; every tensor loads bitwise as recorded: the change is outside them"
    return f"; what changed: {'; '.join(problems)}"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def tensor_problems(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], *, same_policy: bool
) -> list[str]:
    """How the tensors loaded now differ from the record: missing, extra, a different dtype,
    shape or bytes, another saved location, or (under the same map_location) another device."""
    problems = []
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    if missing:
        problems.append(f"{len(missing)} recorded tensor(s) missing: {_names(missing)}")
    if extra:
        problems.append(f"{len(extra)} tensor(s) not in the record: {_names(extra)}")
    fields: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("dtype", lambda r: r.get("dtype")),
        ("shape", lambda r: r.get("shape")),
        ("bytes", lambda r: r.get("digest")),
        ("saved location", lambda r: r.get("saved")),
    ]
    if same_policy:
        fields.append(("device", lambda r: r.get("device")))
    for what, field in fields:
        changed = sorted(
            name for name in set(before) & set(after) if field(before[name]) != field(after[name])
        )
        if changed:
            first = changed[0]
            problems.append(
                f"{len(changed)} tensor(s) differ in {what}: {_names(changed)} ({first}: "
                f"{field(before[first])} recorded, {field(after[first])} now)"
            )
    return problems


def checked_safe_globals(names: Sequence[Any], where: str) -> tuple[str, ...]:
    """Globals a user allows a golden load: ``module.Name`` each, and never one that runs code."""
    for name in names:
        if not isinstance(name, str) or "." not in name:
            raise GoldenError(f"{where} {name!r}: give module.Name (e.g. argparse.Namespace)")
        if runs_code(name):
            raise GoldenError(
                f"{where} {name}: that global runs code or commands; it is never allowed"
            )
    return tuple(names)


@dataclass(frozen=True, kw_only=True)
class GoldenWork:
    """``golden record`` (``files``) or ``golden verify`` (the ``before`` of ``recording``), as
    the run use case's work: one task per file, on the run's launcher."""

    command: str  # record or verify
    options: RunOptions
    inventory: Inventory
    files: tuple[Path, ...] = ()
    before: tuple[CellResult, ...] = ()
    recording: Path | None = None
    safe_globals: tuple[str, ...] = ()
    map_location: str = AUTO

    def open_launcher(self, workdir: Path) -> Launcher:
        return leased_launcher(self.options.launcher, workdir, preload_torchvision=False)

    def environment(self, launcher: Launcher, workdir: Path) -> dict[str, Any]:
        torch_side = torch_environment(
            self.inventory, launcher=launcher, workdir=workdir, timeout_s=self.options.timeout_s
        )
        environment = describe(
            torch_side, self.inventory, visibility_policy="all", launcher=self.options.launcher
        )
        environment["golden"] = {
            "command": self.command,
            "safe_globals": list(self.safe_globals),
            "record": None if self.recording is None else str(self.recording),
        }
        if self.command == "record":
            environment["golden"]["map_location"] = self.map_location
        return environment

    def check_resume(self, previous: ResultsFile, environment: Mapping[str, Any]) -> None:
        raise GoldenError(f"{previous.path}: a golden run does not resume; run it again")

    def tasks(
        self, launcher: Launcher, workdir: Path, environment: Mapping[str, Any], done: set[str]
    ) -> list[Callable[[], CellResult]]:
        runner = GoldenRunner(
            factory=JobFactory(
                workdir=workdir,
                timeout_s=self.options.timeout_s,
                devices=DeviceMap(self.inventory.uuids),
            ),
            launcher=launcher,
            visibility=self.inventory.indices,
            safe_globals=self.safe_globals,
            map_location=self.map_location,
        )
        if self.command == "record":
            return [functools.partial(runner.record, str(path), path) for path in self.files]
        base = (self.recording or Path()).parent
        return [functools.partial(runner.verify, before, base) for before in self.before]

    def announce(self, environment: Mapping[str, Any], tasks: int, done: int) -> str:
        return (
            f"ckpt-matrix golden {self.command}: {tasks} files, torch {environment['torch']}, "
            f"{self.options.jobs} at a time"
        )


def record_work(
    paths: Sequence[Path],
    options: RunOptions,
    inventory: Inventory,
    *,
    map_location: str = AUTO,
    safe_globals: Sequence[str] = (),
) -> GoldenWork:
    """``golden record PATH...``: every file under the paths, checked before anything runs."""
    chosen = map_choice(map_location)
    allowed = checked_safe_globals(safe_globals, "--safe-global")
    return GoldenWork(
        command="record",
        options=options,
        inventory=inventory,
        files=tuple(golden_files(paths)),
        safe_globals=allowed,
        map_location=chosen,
    )


def verify_work(recording: Path, options: RunOptions, inventory: Inventory) -> GoldenWork:
    """``golden verify RECORDING``: the recording's files, with the globals it allowed."""
    golden = read_results(recording)
    recorded_with = golden.environment.get("golden") or {}
    if not isinstance(recorded_with, dict):
        raise GoldenError(f"{recording}:1: 'golden' is not what `golden record` writes")
    named = recorded_with.get("safe_globals") or []
    if not isinstance(named, list):
        raise GoldenError(f"{recording}:1: golden.safe_globals is not a list")
    return GoldenWork(
        command="verify",
        options=options,
        inventory=inventory,
        before=tuple(recorded(golden)),
        recording=recording,
        safe_globals=checked_safe_globals(named, f"{recording}:1 golden.safe_globals"),
    )
