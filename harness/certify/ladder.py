"""The release ladder's table: for each older release, the files it saved (every format it
writes) loaded under the newest release, as a release x format table of PASS, known-bad and FAIL
with the error class. Pure: ``climb`` reads results files already written (each older release's
own run, and the newest's run loading its files); ``to_markdown`` opens with the verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from harness.certify.upgrade import Crossing, crossing
from harness.core.errors import UserError
from harness.core.outcomes import Outcome
from harness.core.recipes import RecipeKind
from harness.core.releases import LADDER_COLUMNS, ladder_column, ladder_unsupported
from harness.core.results import CellResult, ResultsFile, failing_by_id

NOT_SAVED = "not saved: "


class LadderError(UserError):
    """Results that do not make a ladder: the message names the file and what it expected."""


@dataclass
class Rung:
    """One older release: its own run (it saved, and loaded under itself) and the newest
    release's run loading what it saved."""

    release: str  # "2.4.1"
    build: str  # "2.4.1+cu121", as the release's own run names its torch
    python: str
    own: ResultsFile
    crossed: Crossing

    def failing(self) -> list[CellResult]:
        """Cells of this release's files not as predicted under the newest release, or that did
        not cross (saved again, or broken before naming a torch)."""
        return self.crossed.unexpected + self.crossed.saved_again + self.crossed.broken

    def loaded(self) -> list[CellResult]:
        """Every cell the newest release ran on this release's files (not those not run)."""
        return self.crossed.crossed + self.crossed.saved_again + self.crossed.broken

    def failure_class(self, result: CellResult) -> str:
        """A failing cell's error class; one saved again by the newest, ``saved_again``."""
        if any(result is again for again in self.crossed.saved_again):
            return "saved_again"
        return _error_class(result)


@dataclass
class Ladder:
    newest: str
    rungs: list[Rung]
    golden: list[ResultsFile]

    @property
    def golden_failures(self) -> list[CellResult]:
        return failing_by_id(r for part in self.golden for r in part.results)

    @property
    def holds(self) -> bool:
        return not (any(rung.failing() for rung in self.rungs) or self.golden_failures)

    def verdict(self) -> str:
        releases = ", ".join(rung.release for rung in self.rungs)
        loaded = sum(len(rung.loaded()) for rung in self.rungs)
        ran = f"{loaded} cells of files saved by {releases}, loaded under {self.newest}"
        corpus = ""
        if self.golden:
            files = sum(len(part.results) for part in self.golden)
            failed = len(self.golden_failures)
            corpus = f"; the corpus: {files} file(s) verified, {failed} failed"
        if self.holds:
            return f"LADDER HOLDS: {ran}, each as predicted{corpus}"
        failing = sum(len(rung.failing()) for rung in self.rungs)
        return f"LADDER BROKEN: {ran}, {failing} not as predicted{corpus}"


def _release(version: str) -> str:
    return version.split("+")[0]


def climb(
    rungs: list[tuple[ResultsFile, ResultsFile]], golden: list[ResultsFile] | None = None
) -> Ladder:
    """The ladder from each older release's own run and the newest release's run loading that
    release's files (``run --keep-saves``), oldest first; ``golden``: the corpus verified under
    the newest. Raises :class:`LadderError` where the crossing runs disagree on the newest."""
    built: list[Rung] = []
    newest = ""
    for own, crossing_run in rungs:
        saved = _release(str(own.environment.get("torch", "")))
        loaded = _release(str(crossing_run.environment.get("torch", "")))
        if not saved or not loaded:
            raise LadderError(
                f"{own.path if not saved else crossing_run.path}: its environment line names no "
                "torch; give the results files of `ckpt-matrix run`"
            )
        if newest and loaded != newest:
            raise LadderError(
                f"{crossing_run.path}: loaded under torch {loaded}, the others under {newest}; a "
                "ladder loads every release's files under one, the newest"
            )
        if saved == loaded:
            raise LadderError(
                f"{crossing_run.path}: loaded under torch {loaded}, the release that saved "
                f"({own.path}); a rung loads an older release's files under the newest"
            )
        try:
            ladder_unsupported(saved)
        except ValueError as exc:
            raise LadderError(f"{own.path}: {exc}") from None
        newest = loaded
        built.append(
            Rung(
                release=saved,
                build=str(own.environment.get("torch", "")),
                python=str(own.environment.get("python", "?")),
                own=own,
                crossed=crossing(crossing_run, saved, loaded),
            )
        )
    return Ladder(newest=newest, rungs=built, golden=list(golden or []))


def _column(result: CellResult) -> str:
    cell = result.cell
    return ladder_column(
        str(cell.format),
        str(cell.serialization),
        cell.recipe,
        str(cell.save_layout),
        cell.save_world,
    )


def _error_class(result: CellResult) -> str:
    observed = result.observed or {}
    found = observed.get("error_class")
    if isinstance(found, str) and found:
        return found
    return str(result.outcome).lower()


def entry(rung: Rung, column: str) -> str:
    """The table's entry for one release and column: counts of PASS, known-bad (XFAIL as
    predicted) and FAIL with the error classes; what the release cannot save, and why."""
    failing = {id(r) for r in rung.failing()}
    cells = [r for r in rung.loaded() if _column(r) == column]
    if not cells:  # what the release cannot save ran no cell; one that did is shown as it ended
        unsupported = ladder_unsupported(rung.release).get(column)
        return "-" if unsupported is None else NOT_SAVED + unsupported
    passed = sum(1 for r in cells if r.outcome is Outcome.PASS and id(r) not in failing)
    predicted = [r for r in cells if r.outcome is Outcome.XFAIL and id(r) not in failing]
    known_bad = [r for r in predicted if r.recipe_kind is RecipeKind.KNOWN_BAD]
    held_back = [r for r in predicted if r.recipe_kind is not RecipeKind.KNOWN_BAD]
    failed = [r for r in cells if id(r) in failing]
    parts = []
    if failed:
        parts.append(f"FAIL {len(failed)} ({_classes(failed, rung.failure_class)})")
    if passed:
        parts.append(f"PASS {passed}")
    if known_bad:
        parts.append(f"known-bad {len(known_bad)} ({_classes(known_bad)})")
    if held_back:
        parts.append(f"XFAIL {len(held_back)} ({_classes(held_back)})")
    return ", ".join(parts)


def _classes(
    results: list[CellResult], error_class: Callable[[CellResult], str] = _error_class
) -> str:
    return ", ".join(f"{name} {n}" for name, n in Counter(map(error_class, results)).items())


def columns(ladder: Ladder) -> list[str]:
    """The columns any release has cells in or cannot save, in LADDER_COLUMNS's order."""
    present = {_column(r) for rung in ladder.rungs for r in rung.loaded()}
    present |= {column for rung in ladder.rungs for column in ladder_unsupported(rung.release)}
    known = [column for column in LADDER_COLUMNS if column in present]
    return known + sorted(present - set(LADDER_COLUMNS))


def to_markdown(ladder: Ladder) -> str:
    lines = [f"# {ladder.verdict()}", ""]
    shown = columns(ladder)
    lines += [
        f"Files saved under each release (rows), loaded under {ladder.newest} (columns: what was "
        "saved). PASS: bitwise, on the expected devices; known-bad: a recipe known to be wrong, "
        "failing as predicted; XFAIL: a correct recipe failing as predicted (a model the format "
        "cannot hold); FAIL: not as predicted. Error classes in parentheses.",
        "",
        "| saved under | " + " | ".join(shown) + " |",
        "| --- | " + " | ".join("---" for _ in shown) + " |",
    ]
    notes: dict[str, int] = {}

    def noted(text: str) -> str:
        if not text.startswith(NOT_SAVED):
            return text
        number = notes.setdefault(text.removeprefix(NOT_SAVED), len(notes) + 1)
        return f"not saved [{number}]"

    for rung in ladder.rungs:
        lines.append(
            f"| {rung.build} (Python {rung.python}) | "
            + " | ".join(noted(entry(rung, column)) for column in shown)
            + " |"
        )
    lines.append("")
    lines += [f"[{number}] {why}" for why, number in notes.items()]
    if notes:
        lines.append("")
    for rung in ladder.rungs:
        failing = rung.failing()
        own_failing = failing_by_id(rung.own.results)
        lines += [
            f"## {rung.release}",
            "",
            f"Under itself: {len(rung.own.results)} cells, {len(own_failing)} not as predicted. "
            f"Under {ladder.newest}: {len(rung.crossed.crossed)} crossed, "
            f"{len(rung.crossed.saved_again)} saved again (did not cross), "
            f"{len(rung.crossed.broken)} broken before naming a torch, "
            f"{len(rung.crossed.not_run)} not run.",
            "",
        ]
        for title, cells in (
            (f"Under {ladder.newest}, not as predicted", failing),
            ("Under itself, not as predicted", own_failing),
        ):
            if cells:
                lines += [
                    f"{title} ({len(cells)}):",
                    "",
                    "| cell | outcome | error class | reason |",
                ]
                lines.append("| --- | --- | --- | --- |")
                lines += [
                    f"| `{r.id}` | {r.outcome} | {rung.failure_class(r)} | "
                    f"{' '.join(r.reason.split())[:200]} |"
                    for r in cells
                ]
                lines.append("")
    if ladder.golden:
        files = sum(len(part.results) for part in ladder.golden)
        failed = ladder.golden_failures
        lines += [
            f"## The corpus verified under {ladder.newest}",
            "",
            f"{files} file(s) recorded under their releases, {len(failed)} failed.",
            "",
        ]
        lines += [f"- `{r.id}`: {r.outcome}: {' '.join(r.reason.split())[:200]}" for r in failed]
    return "\n".join(lines).rstrip() + "\n"
