"""Expand scenarios into the frozen cells of the matrix; say which combinations were left out."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.cell import CPU, Cell, Visibility
from harness.recipes import RECIPES
from harness.scenarios import Scenario


@dataclass(frozen=True, kw_only=True)
class Omitted:
    """A combination a scenario named that is not a cell, and why."""

    combination: str
    reason: str
    scenario: str


@dataclass(frozen=True, kw_only=True)
class Matrix:
    cells: tuple[Cell, ...]
    omitted: tuple[Omitted, ...]


def expand(
    scenarios: Iterable[Scenario],
    *,
    visibilities: Sequence[tuple[Visibility, Visibility]] = ((CPU, CPU),),
    select: str | None = None,
) -> Matrix:
    """Cells in scenario order, each id once; ``select`` keeps ids containing that substring."""
    cells: dict[str, Cell] = {}
    omitted: list[Omitted] = []
    for scenario in scenarios:
        axes = itertools.product(
            scenario.models,
            scenario.save_layouts,
            scenario.load_layouts,
            scenario.formats,
            scenario.recipes,
            visibilities,
        )
        for model, save, load, fmt, recipe_name, (save_vis, load_vis) in axes:
            reason = RECIPES[recipe_name].skip_reason(save=save, load=load, fmt=fmt)
            cell = Cell(
                model=model,
                save_layout=save,
                load_layout=load,
                format=fmt,
                recipe=recipe_name,
                save_visibility=save_vis,
                load_visibility=load_vis,
            )
            if select is not None and select not in cell.id:
                continue
            if reason is not None:
                omitted.append(Omitted(combination=cell.id, reason=reason, scenario=scenario.name))
                continue
            cells.setdefault(cell.id, cell)
    return Matrix(cells=tuple(cells.values()), omitted=tuple(omitted))
