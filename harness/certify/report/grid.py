"""The matrix as grids: one per (model, format), save layouts as rows, load layouts as columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.core.cell import Cell, device_suffix, visibility_label
from harness.core.recipes import RECIPES
from harness.core.results import CellResult

OUTCOME_ORDER = ("PASS", "XFAIL", "FAIL", "XPASS", "ERROR", "SKIP")


def save_label(cell: Cell) -> str:
    device = device_suffix(cell.save_device, cell.save_visibility)
    return f"{cell.save_layout}[{visibility_label(cell.save_visibility)}]{device}"


def load_label(cell: Cell) -> str:
    return f"{cell.load_layout}[{visibility_label(cell.load_visibility)}]"


def chip_label(cell: Cell) -> str:
    """What tells cells in one grid position apart: the recipe and any non-default axis."""
    parts = [cell.recipe]
    if cell.map_location != "none":
        parts.append(f"map={cell.map_location}")
    if cell.training:
        parts.append(cell.training)
    if cell.serialization != "zip":
        parts.append(cell.serialization)
    return " ".join(parts)


@dataclass
class Grid:
    model: str
    format: str
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], list[CellResult]] = field(default_factory=dict)


def grids(results: Sequence[CellResult]) -> list[Grid]:
    found: dict[tuple[str, str], Grid] = {}
    for result in results:
        cell = result.cell
        grid = found.setdefault((cell.model, str(cell.format)), Grid(cell.model, str(cell.format)))
        row, column = save_label(cell), load_label(cell)
        if row not in grid.rows:
            grid.rows.append(row)
        if column not in grid.columns:
            grid.columns.append(column)
        grid.cells.setdefault((row, column), []).append(result)
    catalogue = list(RECIPES)
    for grid in found.values():
        grid.rows.sort()
        grid.columns.sort()
        for entries in grid.cells.values():
            entries.sort(key=lambda r: (catalogue.index(r.cell.recipe), r.id))
    return list(found.values())
