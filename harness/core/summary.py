"""The summary printed at the end of a run: outcomes per recipe, fragile cells, and failures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from harness.core.outcomes import Outcome
from harness.core.recipes import RECIPES
from harness.core.results import CellResult

_CATALOGUE = list(RECIPES)
_COLUMNS = (Outcome.PASS, Outcome.XFAIL, Outcome.FAIL, Outcome.XPASS, Outcome.ERROR, Outcome.SKIP)


def summary_table(results: Sequence[CellResult]) -> str:
    by_recipe: dict[str, Counter[Outcome]] = {}
    fragile: Counter[str] = Counter()
    kinds: dict[str, str] = {}
    for result in results:
        by_recipe.setdefault(result.cell.recipe, Counter())[result.outcome] += 1
        kinds[result.cell.recipe] = str(result.recipe_kind)
        if result.fragile:
            fragile[result.cell.recipe] += 1
    width = max([len("recipe"), *(len(name) for name in by_recipe)])
    header = f"{'recipe':<{width}}  {'kind':<9}" + "".join(f"{o:>7}" for o in _COLUMNS)
    lines = [header + f"{'fragile':>9}", "-" * (len(header) + 9)]
    for name, counts in sorted(by_recipe.items(), key=lambda item: _CATALOGUE.index(item[0])):
        row = f"{name:<{width}}  {kinds[name]:<9}" + "".join(f"{counts[o]:>7}" for o in _COLUMNS)
        lines.append(row + f"{fragile[name] or '':>9}")
    total = Counter(result.outcome for result in results)
    lines.append("-" * (len(header) + 9))
    lines.append(
        f"{'total':<{width}}  {'':<9}"
        + "".join(f"{total[o]:>7}" for o in _COLUMNS)
        + f"{sum(fragile.values()) or '':>9}"
    )
    fragile_cells = [r for r in results if r.fragile]
    if fragile_cells:
        lines += ["", "Fragile: known-bad recipes that worked here by accident:"]
        lines += [f"  {r.id}\n        {r.expected.reason}" for r in fragile_cells]
    flaky = [r for r in results if r.flaky]
    if flaky:
        lines += ["", "Flaky: ERROR at first, then otherwise on a rerun (not a clean result):"]
        lines += [
            f"  {r.outcome} after {len(r.attempts)} ERROR attempt(s): {r.id}\n"
            f"        first: {r.attempts[0]['reason']}"
            for r in flaky
        ]
    rerun = [r for r in results if r.attempts and not r.flaky]
    if rerun:
        lines += ["", "Consistent errors: ERROR on every attempt:"]
        lines += [f"  {len(r.attempts) + 1} attempts: {r.id}" for r in rerun]
    skipped = Counter(r.reason for r in results if r.outcome is Outcome.SKIP)
    if skipped:
        lines += ["", "Skipped:"]
        lines += [f"  {count} cell(s): {reason}" for reason, count in skipped.items()]
    bad = [r for r in results if r.outcome.fails_run]
    if bad:
        lines += ["", f"{len(bad)} cell(s) failed the run:"]
        lines += [f"  {r.outcome:<5} {r.id}\n        {r.reason}" for r in bad]
    return "\n".join(lines)


def progress_line(result: CellResult, done: int, total: int) -> str:
    width = len(str(total))
    return f"[{done:>{width}}/{total}] {result.outcome:<5} {result.duration_s:6.1f}s  {result.id}"
