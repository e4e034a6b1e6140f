"""Covers of the shipped matrix: the fewest, cheapest cells that still bring every value of the
axes a test is about, for the tests that run the matrix's kinds of cell a second time (under
another launcher, with a user's model) rather than every cell again."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from harness.core.axes import Layout, Wrapper
from harness.core.cell import Cell

Axis = Callable[[Cell], Hashable]
JobCost = Callable[[Layout, int, Wrapper], float]  # layout, world size, wrapper -> seconds

AXES: dict[str, Axis] = {
    "recipe": lambda cell: cell.recipe,
    "format": lambda cell: cell.format,
}


def values(cell: Cell, axes: Mapping[str, Axis]) -> set[tuple[str, Hashable]]:
    return {(name, axis(cell)) for name, axis in axes.items()}


def cheapest_cover(
    cells: Sequence[Cell],
    axes: Mapping[str, Axis],
    load_s: JobCost,
    save_s: JobCost | None = None,
    prefer: Callable[[Cell], Hashable] = lambda cell: cell.id,
) -> list[Cell]:
    """Cells that together bring every value each axis takes in ``cells``, chosen greedily: the
    cell that brings the most values not yet covered for what it adds to the run, its load and
    (unless a cell already chosen made it) its save, as ``load_s`` and ``save_s`` (default: as
    ``load_s``) cost them; ``prefer`` orders the cells that tie (the smaller first).
    Deterministic: the same cells give the same cover."""
    save_job_s = load_s if save_s is None else save_s

    def saving_s(cell: Cell) -> float:
        return save_job_s(cell.save_layout, cell.save_world, cell.save_wrapper)

    def loading_s(cell: Cell) -> float:
        return load_s(cell.load_layout, cell.load_world, cell.load_wrapper)

    wanted = set().union(*(values(cell, axes) for cell in cells))
    covered: set[tuple[str, Hashable]] = set()
    saved: set[object] = set()
    cover: list[Cell] = []
    while covered != wanted:
        best: tuple[float, Hashable] | None = None
        chosen: Cell | None = None
        for cell in cells:
            new = len(values(cell, axes) - covered)
            if not new:
                continue
            added = loading_s(cell) + (0.0 if cell.save_key in saved else saving_s(cell))
            rank = (added / new, prefer(cell))
            if best is None or rank < best:
                best, chosen = rank, cell
        assert chosen is not None
        cover.append(chosen)
        covered |= values(chosen, axes)
        saved.add(chosen.save_key)
    return cover
