"""Certification: compare two results files cell by cell.

Pure: ``compare(baseline, candidate)`` returns every difference, classified; ``certified`` and
the exit code follow from it. A regression is a cell that no longer ends as its baseline did
(PASS or XFAIL before; FAIL, XPASS or ERROR now), or a cell missing from the candidate or skipped
there (lost coverage), unless missing cells are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsFile

CERTIFIED, REGRESSION, UNUSABLE = 0, 1, 2

# Environment fields whose change a certification names ("driver 550.54 -> 580.159").
ENVIRONMENT_FIELDS = (
    "torch",
    "torchvision",
    "cuda_build",
    "driver_version",
    "cuda_driver_version",
    "python",
    "platform",
    "harness_version",
    "visibility_policy",
    "launcher",
)


@dataclass(frozen=True, kw_only=True)
class Change:
    id: str
    kind: str  # regression | skipped | fix | outcome | error_class | message | devices
    before: str
    after: str


@dataclass
class Diff:
    baseline: str
    candidate: str
    environment: list[tuple[str, Any, Any]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_candidate: list[str] = field(default_factory=list)
    compared: int = 0
    flaky: list[str] = field(default_factory=list)  # the candidate's cells that needed reruns

    def of_kind(self, kind: str) -> list[Change]:
        return [change for change in self.changes if change.kind == kind]

    def certified(self, *, allow_missing: bool = False, fail_on_flaky: bool = False) -> bool:
        """No regression, and no lost coverage (cells missing, or skipped now) unless allowed;
        with ``fail_on_flaky``, no cell that passed only on a rerun."""
        missing = (self.only_in_baseline or self.of_kind("skipped")) and not allow_missing
        flaky = bool(self.flaky) and fail_on_flaky
        return not self.of_kind("regression") and not missing and not flaky

    def exit_code(self, *, allow_missing: bool = False, fail_on_flaky: bool = False) -> int:
        certified = self.certified(allow_missing=allow_missing, fail_on_flaky=fail_on_flaky)
        return CERTIFIED if certified else REGRESSION


def _observed(result: CellResult, key: str) -> Any:
    return None if result.observed is None else result.observed.get(key)


def compare(baseline: ResultsFile, candidate: ResultsFile) -> Diff:
    diff = Diff(baseline=str(baseline.path), candidate=str(candidate.path))
    for key in ENVIRONMENT_FIELDS:
        before, after = baseline.environment.get(key), candidate.environment.get(key)
        if before != after:
            diff.environment.append((key, before, after))
    gpus_before = _gpu_names(baseline.environment)
    gpus_after = _gpu_names(candidate.environment)
    if gpus_before != gpus_after:
        diff.environment.append(("gpus", gpus_before, gpus_after))
    old = {result.id: result for result in baseline.results}
    new = {result.id: result for result in candidate.results}
    diff.only_in_baseline = sorted(old.keys() - new.keys())
    diff.only_in_candidate = sorted(new.keys() - old.keys())
    diff.flaky = sorted(cell_id for cell_id, result in new.items() if result.flaky)
    for cell_id in sorted(old.keys() & new.keys()):
        diff.compared += 1
        diff.changes += _cell_changes(old[cell_id], new[cell_id])
    return diff


def _cell_changes(before: CellResult, after: CellResult) -> list[Change]:
    changes = []
    cell_id = before.id
    if before.outcome != after.outcome:
        if after.outcome is Outcome.SKIP:
            kind = "skipped"  # lost coverage, like a missing cell
        elif after.outcome.fails_run and not before.outcome.fails_run:
            kind = "regression"
        elif before.outcome.fails_run and not after.outcome.fails_run:
            kind = "fix"
        else:
            kind = "outcome"
        changes.append(
            Change(
                id=cell_id,
                kind=kind,
                before=str(before.outcome),
                after=f"{after.outcome}: {after.reason}",
            )
        )
    if Outcome.SKIP in (before.outcome, after.outcome):
        return changes  # a skipped cell observed nothing: its outcome change says it all
    for key, kind in (("error_class", "error_class"), ("message", "message")):
        was, now = _observed(before, key), _observed(after, key)
        if was != now and (was or now):
            changes.append(Change(id=cell_id, kind=kind, before=str(was), after=str(now)))
    was_devices, now_devices = _observed(before, "devices"), _observed(after, "devices")
    if was_devices != now_devices and was_devices is not None and now_devices is not None:
        changes.append(
            Change(id=cell_id, kind="devices", before=str(was_devices), after=str(now_devices))
        )
    return changes


def _gpu_names(environment: dict[str, Any]) -> str:
    gpus = environment.get("gpus")
    if not isinstance(gpus, list):
        return "none"
    return ", ".join(f"{gpu.get('index')}:{gpu.get('name')}" for gpu in gpus)


def to_markdown(diff: Diff, *, allow_missing: bool = False, fail_on_flaky: bool = False) -> str:
    certified = diff.certified(allow_missing=allow_missing, fail_on_flaky=fail_on_flaky)
    verdict = "CERTIFIED" if certified else "NOT CERTIFIED"
    lines = [
        f"## ckpt-matrix certification: {verdict}",
        "",
        f"Baseline `{diff.baseline}`, candidate `{diff.candidate}`: "
        f"{diff.compared} cells compared.",
        "",
    ]
    if diff.environment:
        lines += ["### Environment", "", "| field | baseline | candidate |", "| --- | --- | --- |"]
        lines += [f"| {key} | {before} | {after} |" for key, before, after in diff.environment]
        lines.append("")
    sections = (
        ("regression", "Regressions"),
        ("skipped", "Skipped now (lost coverage)"),
        ("fix", "Fixes"),
        ("outcome", "Other outcome changes"),
        ("error_class", "Changed error classes"),
        ("devices", "Changed devices"),
        ("message", "Changed error messages"),
    )
    for kind, title in sections:
        found = diff.of_kind(kind)
        if found:
            lines += [
                f"### {title} ({len(found)})",
                "",
                "| cell | baseline | candidate |",
                "| --- | --- | --- |",
            ]
            lines += [f"| `{c.id}` | {_cell(c.before)} | {_cell(c.after)} |" for c in found]
            lines.append("")
    for names, title in (
        (diff.only_in_baseline, "Only in the baseline (missing now)"),
        (diff.only_in_candidate, "Only in the candidate (new)"),
    ):
        if names:
            lines += [f"### {title} ({len(names)})", ""]
            lines += [f"- `{name}`" for name in names]
            lines.append("")
    if diff.flaky:
        failing = " (these fail the certification: --fail-on-flaky)" if fail_on_flaky else ""
        lines += [
            f"### Flaky in the candidate: passed only on a rerun ({len(diff.flaky)}){failing}",
            "",
        ]
        lines += [f"- `{name}`" for name in diff.flaky]
        lines.append("")
    if not diff.changes and not diff.only_in_baseline and not diff.only_in_candidate:
        lines.append("No cell changed.")
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
