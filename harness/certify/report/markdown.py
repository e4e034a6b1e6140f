"""The Markdown report: environment, outcome counts, a grid per (model, format), failures."""

from __future__ import annotations

from collections import Counter

from harness.certify.report.grid import OUTCOME_ORDER, grids
from harness.core.results import ResultsFile
from harness.core.summary import summary_table

ENVIRONMENT_SHOWN = (
    "torch",
    "torchvision",
    "cuda_build",
    "driver_version",
    "cuda_driver_version",
    "gpus",
    "python",
    "platform",
    "hostname",
    "harness_version",
    "git_commit",
    "visibility_policy",
    "launcher",
    "started_at",
    "finished_at",
)


def report_markdown(results: ResultsFile) -> str:
    environment = results.environment
    counts = Counter(str(r.outcome) for r in results.results)
    lines = [
        f"# ckpt-matrix results: {len(results.results)} cells",
        "",
        " · ".join(f"**{o}** {counts[o]}" for o in OUTCOME_ORDER if counts[o]),
        "",
        "## Environment",
        "",
        "| | |",
        "| --- | --- |",
    ]
    for key in ENVIRONMENT_SHOWN:
        if key in environment:
            lines.append(
                f"| {key} | {_gpus(environment[key]) if key == 'gpus' else environment[key]} |"
            )
    lines += ["", "## Per recipe", "", "```", summary_table(results.results), "```", ""]
    for grid in grids(results.results):
        lines += [
            f"## {grid.model}, {grid.format}",
            "",
            "| save \\ load | " + " | ".join(grid.columns) + " |",
            "| --- |" + " --- |" * len(grid.columns),
        ]
        for row in grid.rows:
            entries = []
            for column in grid.columns:
                here = Counter(str(r.outcome) for r in grid.cells.get((row, column), []))
                entries.append(", ".join(f"{here[o]} {o}" for o in OUTCOME_ORDER if here[o]) or "")
            lines.append(f"| {row} | " + " | ".join(entries) + " |")
        lines.append("")
    flaky = [r for r in results.results if r.flaky]
    if flaky:
        lines += [f"## Flaky cells ({len(flaky)}): passed only on a rerun", ""]
        lines += [
            f"- **{r.outcome}** after {len(r.attempts)} ERROR attempt(s) `{r.id}`: first "
            f"{' '.join(str(r.attempts[0]['reason']).split())}"
            for r in flaky
        ]
        lines.append("")
    failing = [r for r in results.results if r.outcome.fails_run]
    if failing:
        lines += [f"## Failing cells ({len(failing)})", ""]
        lines += [f"- **{r.outcome}** `{r.id}`: {' '.join(r.reason.split())}" for r in failing]
        lines.append("")
    return "\n".join(lines)


def _gpus(value: object) -> str:
    if not isinstance(value, list):
        return str(value)
    return ", ".join(f"{gpu.get('index')}: {gpu.get('name')} ({gpu.get('uuid')})" for gpu in value)
