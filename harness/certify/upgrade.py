"""An upgrade's certification: one torch release's run against another's, and the files the
older one saved loaded by the newer (the gate), and back (told, never gating: a downgrade may
fail). Pure: ``certify_upgrade`` reads results files already written; ``to_markdown`` and
``to_html`` open with the verdict.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from harness.certify.diff import Diff, compare
from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsFile, failing_by_id

# What a cell that the workers could not build says (harness.worker.probe): an environment
# difference, named, not lost coverage.
_MISSING_PACKAGE = "which the workers' interpreter lacks"


@dataclass
class Crossing:
    """A run that loaded under ``loaded`` the files saved under ``saved``."""

    saved: str
    loaded: str
    crossed: list[CellResult] = field(default_factory=list)  # saved under one, loaded under other
    unexpected: list[CellResult] = field(default_factory=list)  # crossed, and FAIL/XPASS/ERROR
    saved_again: list[CellResult] = field(default_factory=list)  # the loading torch saved it
    broken: list[CellResult] = field(default_factory=list)  # a job broke before naming a torch
    not_run: list[CellResult] = field(default_factory=list)  # SKIP, with the reason


def _torch(result: CellResult, key: str) -> str:
    value = (result.observed or {}).get(key)
    return value if isinstance(value, str) else ""


def crossing(results: ResultsFile, saved: str, loaded: str) -> Crossing:
    """Each cell of ``results`` by what it shows: loaded under ``loaded`` from a file saved under
    ``saved`` (crossed: as predicted or not), saved again by the loading torch (it did not
    cross), broken before its result named a torch (an ERROR: a job that crashed), or not run.
    A version matches by its release (``2.15.0`` is ``2.15.0+cu132``). Each list is in cell id
    order, not the order the cells finished in, so two certifications of one commit read alike."""
    found = Crossing(saved=saved, loaded=loaded)
    for result in sorted(results.results, key=lambda r: r.id):
        if result.outcome is Outcome.SKIP:
            found.not_run.append(result)
            continue
        before, after = _torch(result, "saved_with_torch"), _torch(result, "loaded_with_torch")
        if before.startswith(saved) and after.startswith(loaded):
            found.crossed.append(result)
            if result.outcome.fails_run:
                found.unexpected.append(result)
        elif before.startswith(loaded):
            found.saved_again.append(result)
        elif result.outcome.fails_run:
            found.broken.append(result)
        else:  # a save refused under the older torch: no file to load, its refusal crossed
            found.crossed.append(result)
    return found


def environment_skip(result: CellResult) -> str:
    """The package whose absence left a cell out (``torchvision``), or ""."""
    if result.outcome is not Outcome.SKIP or _MISSING_PACKAGE not in result.reason:
        return ""
    return result.reason.split(" needs ", 1)[-1].split(",", 1)[0].strip()


@dataclass
class Upgrade:
    old: str
    new: str
    runs: Diff  # the older release's run against the newer's
    forward: Crossing  # saved under old, loaded under new: gates
    backward: Crossing | None = None  # saved under new, loaded under old: told
    golden: ResultsFile | None = None  # a team's recorded files verified under new: gates
    environment_ids: frozenset[str] = frozenset()  # skipped under new for a missing package
    environment_reasons: tuple[str, ...] = ()  # "30 cell(s) need torchvision"

    @property
    def regressions(self) -> int:
        return len(self.runs.of_kind("regression"))

    def lost(self) -> list[str]:
        """Cells the newer run skipped or lacks for a reason other than a missing package."""
        skipped = [c.id for c in self.runs.of_kind("skipped") if c.id not in self.environment_ids]
        return skipped + self.runs.only_in_baseline

    @property
    def golden_failures(self) -> list[CellResult]:
        if self.golden is None:
            return []
        return failing_by_id(self.golden.results)

    @property
    def certified(self) -> bool:
        return not (
            self.regressions
            or self.lost()
            or self.forward.unexpected
            or self.forward.saved_again
            or self.forward.broken
            or self.golden_failures
        )

    def verdict(self) -> str:
        """One line: the verdict, what it rests on, and what was not run and why."""
        head = f"torch {self.old} -> {self.new}"
        ran = (
            f"{self.runs.compared} cells compared, {len(self.forward.crossed)} loaded under "
            f"{self.new} from files {self.old} saved"
        )
        if self.certified:
            text = f"CERTIFIED: {head}: {ran}"
        else:
            found = []
            if self.regressions:
                found.append(f"{self.regressions} regression(s)")
            if self.lost():
                found.append(f"{len(self.lost())} cell(s) lost")
            if self.forward.unexpected:
                first = self.forward.unexpected[0]
                found.append(
                    f"{len(self.forward.unexpected)} crossed cell(s) not as predicted (first "
                    f"{first.id}: {first.outcome})"
                )
            if self.forward.saved_again:
                found.append(f"{len(self.forward.saved_again)} cell(s) did not cross")
            if self.forward.broken:
                found.append(f"{len(self.forward.broken)} crossing job(s) broke")
            if self.golden_failures:
                found.append(f"{len(self.golden_failures)} golden file(s) failed")
            text = f"NOT CERTIFIED: {head}: {', '.join(found)}; {ran}"
        if self.environment_reasons:
            text += f"; not run under {self.new}: " + ", ".join(self.environment_reasons)
        return text


def certify_upgrade(
    old: ResultsFile,
    new: ResultsFile,
    forward: ResultsFile,
    *,
    backward: ResultsFile | None = None,
    golden: ResultsFile | None = None,
) -> Upgrade:
    """The certification of an upgrade from ``old``'s torch to ``new``'s, from the runs of both,
    the run that loaded under the newer the files the older saved, and optionally back, and a
    team's golden files verified under the newer."""
    before, after = str(old.environment.get("torch", "?")), str(new.environment.get("torch", "?"))
    release_before, release_after = before.split("+")[0], after.split("+")[0]
    skipped_for = [(r.id, environment_skip(r)) for r in new.results if environment_skip(r)]
    packages: dict[str, int] = {}
    for _, package in skipped_for:
        packages[package] = packages.get(package, 0) + 1
    return Upgrade(
        old=release_before,
        new=release_after,
        runs=compare(old, new),
        forward=crossing(forward, release_before, release_after),
        backward=None if backward is None else crossing(backward, release_after, release_before),
        golden=golden,
        environment_ids=frozenset(cell_id for cell_id, _ in skipped_for),
        environment_reasons=tuple(
            f"{count} cell(s) need {package}" for package, count in sorted(packages.items())
        ),
    )


def _rows(results: list[CellResult], limit: int = 40) -> list[str]:
    rows = [f"| `{r.id}` | {r.outcome} | {' '.join(r.reason.split())[:160]} |" for r in results]
    more = len(results) - limit
    return rows[:limit] + ([f"| ... and {more} more | | |"] if more > 0 else [])


def _crossing_lines(found: Crossing, title: str) -> list[str]:
    counts = {
        outcome: sum(1 for r in found.crossed if r.outcome is outcome)
        for outcome in (Outcome.PASS, Outcome.XFAIL, Outcome.FAIL, Outcome.XPASS, Outcome.ERROR)
    }
    lines = [
        f"### {title}",
        "",
        f"{len(found.crossed)} cells saved under {found.saved} and loaded under {found.loaded}: "
        + ", ".join(f"{count} {outcome}" for outcome, count in counts.items() if count)
        + f"; {len(found.saved_again)} did not cross, {len(found.broken)} broke before naming a "
        f"torch, {len(found.not_run)} not run.",
        "",
    ]
    for cells, heading in (
        (found.unexpected, "Not as predicted"),
        (found.saved_again, "Saved again by the loading torch (did not cross)"),
        (found.broken, "Broken before naming a torch (a job crashed)"),
    ):
        if cells:
            lines += [f"{heading} ({len(cells)}):", "", "| cell | outcome | reason |"]
            lines += ["| --- | --- | --- |", *_rows(cells), ""]
    return lines


def to_markdown(upgrade: Upgrade) -> str:
    from harness.certify.diff import to_markdown as diff_markdown

    lines = [f"# {upgrade.verdict()}", ""]
    lines += _crossing_lines(
        upgrade.forward, f"Files saved by {upgrade.old}, loaded by {upgrade.new} (gates)"
    )
    if upgrade.backward is not None:
        lines += _crossing_lines(
            upgrade.backward,
            f"Files saved by {upgrade.new}, loaded by {upgrade.old} (told, not gating: a "
            "downgrade may fail)",
        )
    if upgrade.golden is not None:
        failed = upgrade.golden_failures
        lines += [
            "### Golden files verified under " + upgrade.new,
            "",
            f"{len(upgrade.golden.results)} file(s), {len(failed)} failed.",
            "",
        ]
        if failed:
            lines += ["| cell | outcome | reason |", "| --- | --- | --- |", *_rows(failed), ""]
    lines += [f"### The {upgrade.old} run against the {upgrade.new} run", ""]
    body = diff_markdown(upgrade.runs, allow_missing=True).split("\n", 1)[1]
    lines.append(body.replace("\n### ", "\n#### "))
    return "\n".join(lines).rstrip() + "\n"


def to_html(upgrade: Upgrade) -> str:
    """The Markdown's content as a page whose first element is the verdict."""
    markdown = to_markdown(upgrade)
    verdict, rest = markdown.split("\n", 1)
    colour = "#1a7f37" if upgrade.certified else "#cf222e"
    body = html.escape(rest)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(verdict.lstrip('# '))}</title></head><body>\n"
        f'<h1 style="color:{colour}">{html.escape(verdict.lstrip("# "))}</h1>\n'
        f"<pre>{body}</pre>\n</body></html>\n"
    )
