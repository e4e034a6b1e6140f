"""The Markdown report (a CI job summary): the verdict, the figures, the environment, the grid
of chips, the distributed reshards, outcomes per recipe, and the unexpected cells."""

from __future__ import annotations

from harness.certify.report.grid import OUTCOME_ORDER, WORST_FIRST, Chip, Grid, grid
from harness.certify.report.headline import (
    anchor,
    environment_rows,
    figures,
    unexpected,
    verdict,
)
from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsFile
from harness.core.summary import summary_table

SQUARES = {
    Outcome.PASS: "🟩",
    Outcome.XFAIL: "🟦",
    Outcome.FAIL: "🟥",
    Outcome.XPASS: "🟧",
    Outcome.ERROR: "🟪",
    Outcome.SKIP: "⬜",
}


def verdict_line(results: ResultsFile) -> str:
    """The report's first line: the verdict, and a link to the first unexpected cell if any."""
    bad = unexpected(results)
    line = f"# ckpt-matrix: {verdict(results)}"
    return f"{line}, first [`{bad[0].id}`](#{anchor(1)})" if bad else line


def chip_text(chip: Chip) -> str:
    """``🟩 strip_prefix 4 PASS``; a mixed chip: ``🟦 slice_prefix 6: 3 PASS, 3 XFAIL``."""
    counts = chip.counts
    text = f"{SQUARES[chip.outcome]} {chip.recipe} {len(chip.results)}"
    if chip.mixed:
        text += ": " + ", ".join(f"{counts[o]} {o}" for o in OUTCOME_ORDER if counts[o])
    else:
        text += f" {chip.outcome}"
    extra = [f"{n} {what}" for n, what in ((chip.fragile, "fragile"), (chip.flaky, "flaky")) if n]
    return text + (f" ({', '.join(extra)})" if extra else "")


def square_text(results: list[CellResult]) -> str:
    """One square of a reshard: the colour of each outcome among its cells, worst first."""
    present = {result.outcome for result in results}
    return "".join(SQUARES[outcome] for outcome in WORST_FIRST if outcome in present) or "·"


def report_markdown(results: ResultsFile) -> str:
    matrix = grid(results.results)
    lines = [
        verdict_line(results),
        "",
        " · ".join(f"**{figure.value}** {figure.label}" for figure in figures(results)),
        "",
        "## Environment",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in environment_rows(results)),
        "",
        "## Save layouts (rows) by load layouts (columns)",
        "",
        " · ".join(f"{SQUARES[o]} {o}" for o in OUTCOME_ORDER)
        + ". One chip per recipe: its cells in that position, coloured by the worst outcome.",
        "",
        "| save \\ load | " + " | ".join(matrix.columns) + " |",
        "| --- |" + " --- |" * len(matrix.columns),
    ]
    for row in matrix.rows:
        entries = [
            "<br>".join(chip_text(chip) for chip in matrix.at(row, column))
            for column in matrix.columns
        ]
        lines.append(f"| {row} | " + " | ".join(entries) + " |")
    lines.append("")
    lines += _reshards(matrix)
    lines += ["## Per recipe", "", "```", summary_table(results.results), "```", ""]
    flaky = [r for r in results.results if r.flaky]
    if flaky:
        lines += [f"## Flaky cells ({len(flaky)}): passed only on a rerun", ""]
        lines += [
            f"- **{r.outcome}** after {len(r.attempts)} ERROR attempt(s) `{r.id}`: first "
            f"{' '.join(str(r.attempts[0]['reason']).split())}"
            for r in flaky
        ]
        lines.append("")
    bad = unexpected(results)
    if bad:
        lines += [f"## Unexpected cells ({len(bad)})", ""]
        lines += [
            f'- <a id="{anchor(number)}"></a>**{r.outcome}** `{r.id}`: {" ".join(r.reason.split())}'
            for number, r in enumerate(bad, 1)
        ]
        lines.append("")
    lines += _cells(matrix)
    return "\n".join(lines)


def _reshards(matrix: Grid) -> list[str]:
    """Per grid position of a distributed save and load: each recipe's square of world sizes."""
    lines: list[str] = []
    for row in matrix.rows:
        for column in matrix.columns:
            squares = [(chip, chip.square) for chip in matrix.at(row, column)]
            if not squares or squares[0][1] is None:
                continue
            loads = sorted({m for _, square in squares if square for m in square.loads})
            lines += [
                f"### {row} → {column}",
                "",
                "| recipe | saved by \\ loaded by | " + " | ".join(map(str, loads)) + " |",
                "| --- | --- |" + " --- |" * len(loads),
            ]
            for chip, square in squares:
                assert square is not None  # every chip of a position has one, or none has
                for index, save in enumerate(square.saves):
                    name = f"`{chip.recipe}`" if index == 0 else ""
                    cells = [square_text(square.cells.get((save, load), [])) for load in loads]
                    lines.append(f"| {name} | {save} | " + " | ".join(cells) + " |")
            lines.append("")
    if lines:
        lines = [
            "## Distributed reshards",
            "",
            "Each recipe's square: the world size it saved with as rows, the one it loaded "
            "with as columns.",
            "",
            *lines,
        ]
    return lines


def _cells(matrix: Grid) -> list[str]:
    """Every chip's cells, collapsed: what tells them apart, and each one's outcome."""
    lines = [
        "## Every chip's cells",
        "",
        "<details><summary>Each chip's cells by the axes that tell them apart</summary>",
        "",
    ]
    for row, column, chip in matrix:
        entries = [
            ", ".join(f"{name} {value}" for name, value in chip.describe(result))
            + f": {result.outcome}"
            for result in chip.results
        ]
        detail = " · ".join(entries) if chip.axes else ""
        lines.append(f"- {row} → {column}: {chip_text(chip)}" + (f" — {detail}" if detail else ""))
    lines += ["", "</details>", ""]
    return lines
