"""What a report opens with: the verdict, the figures that matter, and the environment."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsFile

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

PREDICTED = "every cell as predicted"


def unexpected(results: ResultsFile) -> list[CellResult]:
    """The cells that fail the run (FAIL, XPASS, ERROR), in the file's order."""
    return [result for result in results.results if result.outcome.fails_run]


def anchor(number: int) -> str:
    """The id of the n-th (from 1) unexpected cell's entry in a report's list of them."""
    return f"unexpected-{number}"


def verdict(results: ResultsFile) -> str:
    """``every cell as predicted``, or ``2 unexpected (1 FAIL, 1 ERROR)`` (a report follows it
    with a link to the first of them), or ``no cells``."""
    if not results.results:
        return "no cells"  # not a vacuous "every cell as predicted"
    bad = unexpected(results)
    if not bad:
        return PREDICTED
    counts = Counter(result.outcome for result in bad)
    kinds = ", ".join(
        f"{counts[outcome]} {outcome}"
        for outcome in (Outcome.FAIL, Outcome.XPASS, Outcome.ERROR)
        if counts[outcome]
    )
    return f"{len(bad)} unexpected ({kinds})"


@dataclass(frozen=True)
class Figure:
    value: str
    label: str


def figures(results: ResultsFile) -> list[Figure]:
    """Cells, PASS, XFAIL, fragile, skipped and the time the run took."""
    cells = results.results
    counts = Counter(result.outcome for result in cells)
    return [
        Figure(str(len(cells)), "cells"),
        Figure(str(counts[Outcome.PASS]), "PASS"),
        Figure(str(counts[Outcome.XFAIL]), "XFAIL"),
        Figure(str(sum(result.fragile for result in cells)), "fragile"),
        Figure(str(counts[Outcome.SKIP]), "skipped"),
        _time(results),
    ]


def _time(results: ResultsFile) -> Figure:
    """The wall time from the run's start to its finish where both are recorded, else the sum
    of the cells' durations (which overlap when cells ran side by side), labelled as such."""
    environment = _environment(results)
    try:
        start = datetime.fromisoformat(str(environment["started_at"]))
        finish = datetime.fromisoformat(str(environment["finished_at"]))
        seconds = (finish - start).total_seconds()
    except (KeyError, ValueError, TypeError):
        seconds = -1.0
    if seconds >= 0:
        runs = len(results.ends)
        label = "wall time" if runs <= 1 else f"wall time (first start to last finish, {runs} runs)"
        return Figure(duration(seconds), label)
    total = sum(result.duration_s for result in results.results)
    return Figure(duration(total), "summed over cells (no start and finish recorded)")


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _environment(results: ResultsFile) -> dict[str, Any]:
    """The environment line, with the finish from the last end line where the line lacks it."""
    environment = dict(results.environment)
    if environment.get("finished_at") is None and results.ends:
        environment["finished_at"] = results.ends[-1].get("finished_at")
    return environment


def environment_rows(results: ResultsFile) -> list[tuple[str, str]]:
    """Each shown key with its value as text: ``none`` where absent or None. A merged file lacks
    the keys its runners disagree on; those read as each runner's value."""
    environment = _environment(results)
    sources = environment.get("merged_from")
    rows = []
    for key in ENVIRONMENT_SHOWN:
        if key not in environment and isinstance(sources, list) and sources:
            values = list(
                dict.fromkeys(_text(key, s.get(key)) for s in sources if isinstance(s, dict))
            )
            text = " / ".join(values) or "none"
            rows.append(
                (key, text + " (differs between the merged runs)" if len(values) > 1 else text)
            )
        else:
            rows.append((key, _text(key, environment.get(key))))
    return rows


def _text(key: str, value: object) -> str:
    if value is None or value == "" or value == []:
        return "none"
    if key == "gpus" and isinstance(value, list):
        return ", ".join(
            f"{_text('', gpu.get('index'))}: {_text('', gpu.get('name'))} "
            f"({_text('', gpu.get('uuid'))})"
            if isinstance(gpu, dict)
            else _text("", gpu)
            for gpu in value
        )
    if isinstance(value, list):
        return ", ".join(_text("", item) for item in value)
    return str(value)
