"""The matrix as one grid: save layouts as rows, load layouts as columns, one chip per recipe in
each position. A chip holds its cells, told apart by the axes that differ among them; a chip of
a distributed save and a distributed load also has its reshards as a square of world sizes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from harness.core.axes import Layout
from harness.core.cell import Cell, device_suffix, visibility_label
from harness.core.outcomes import Outcome
from harness.core.recipes import RECIPES
from harness.core.results import CellResult

# the order outcomes are listed in (filters, counts)
OUTCOME_ORDER = (
    Outcome.PASS,
    Outcome.XFAIL,
    Outcome.FAIL,
    Outcome.XPASS,
    Outcome.ERROR,
    Outcome.SKIP,
)
# the order a chip's colour is chosen in: the first outcome among its cells
WORST_FIRST = (
    Outcome.FAIL,
    Outcome.XPASS,
    Outcome.ERROR,
    Outcome.SKIP,
    Outcome.XFAIL,
    Outcome.PASS,
)


def worst(results: Sequence[CellResult]) -> Outcome:
    present = {result.outcome for result in results}
    return next(outcome for outcome in WORST_FIRST if outcome in present)


def save_label(cell: Cell) -> str:
    device = device_suffix(cell.save_device, cell.save_visibility)
    return f"{cell.save_layout}[{visibility_label(cell.save_visibility)}]{device}"


def load_label(cell: Cell) -> str:
    return f"{cell.load_layout}[{visibility_label(cell.load_visibility)}]"


def _worlds(cell: Cell) -> str:
    return f"{cell.save_world}→{cell.load_world}"


def _wrappers(cell: Cell) -> str:
    return f"{cell.save_wrapper}→{cell.load_wrapper}"


# What tells the cells of one recipe in one grid position apart (the row and the column already
# name the layouts, visibilities and the saved device): each axis's name and its value for a cell.
AXES: tuple[tuple[str, Callable[[Cell], str]], ...] = (
    ("model", lambda cell: cell.model),
    ("world", _worlds),
    ("wrapper", _wrappers),
    ("format", lambda cell: str(cell.format)),
    ("serialization", lambda cell: cell.serialization),
    ("map_location", lambda cell: cell.map_location),
    ("training", lambda cell: cell.training or "none"),
)


@dataclass
class Square:
    """The reshards of one chip: save world sizes as rows, load world sizes as columns."""

    saves: list[int]
    loads: list[int]
    cells: dict[tuple[int, int], list[CellResult]]


@dataclass
class Chip:
    """One recipe in one grid position, with every cell it holds there."""

    recipe: str
    results: list[CellResult] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        """The worst outcome among its cells: what the chip's colour says."""
        return worst(self.results)

    @property
    def counts(self) -> Counter[Outcome]:
        return Counter(result.outcome for result in self.results)

    @property
    def mixed(self) -> bool:
        return len(self.counts) > 1

    @property
    def fragile(self) -> int:
        return sum(result.fragile for result in self.results)

    @property
    def flaky(self) -> int:
        return sum(result.flaky for result in self.results)

    @property
    def axes(self) -> list[str]:
        """The names of the axes whose values differ among its cells, in the order of AXES."""
        return [
            name for name, value in AXES if len({value(result.cell) for result in self.results}) > 1
        ]

    def describe(self, result: CellResult) -> list[tuple[str, str]]:
        """One of its cells as the values of the axes that tell it apart from the others."""
        values = dict(AXES)
        return [(name, values[name](result.cell)) for name in self.axes]

    @property
    def square(self) -> Square | None:
        """Its reshards, where both the save and the load layout are distributed."""
        first = self.results[0].cell
        if not (first.save_layout.distributed and first.load_layout.distributed):
            return None
        cells: dict[tuple[int, int], list[CellResult]] = {}
        for result in self.results:
            cells.setdefault((result.cell.save_world, result.cell.load_world), []).append(result)
        return Square(
            saves=sorted({save for save, _ in cells}),
            loads=sorted({load for _, load in cells}),
            cells=cells,
        )


@dataclass
class Grid:
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    chips: dict[tuple[str, str], list[Chip]] = field(default_factory=dict)

    def at(self, row: str, column: str) -> list[Chip]:
        return self.chips.get((row, column), [])

    def __iter__(self) -> Iterator[tuple[str, str, Chip]]:
        """Every chip with its row and column, row by row."""
        for row in self.rows:
            for column in self.columns:
                for chip in self.at(row, column):
                    yield row, column, chip


_LAYOUTS = list(Layout)
_CATALOGUE = list(RECIPES)


def _axis_order(result: CellResult) -> tuple[object, ...]:
    cell = result.cell
    return (cell.model, cell.save_world, cell.load_world, *(value(cell) for _, value in AXES))


def grid(results: Sequence[CellResult]) -> Grid:
    rows: dict[str, tuple[object, ...]] = {}
    columns: dict[str, tuple[object, ...]] = {}
    found: dict[tuple[str, str], dict[str, Chip]] = {}
    for result in results:
        cell = result.cell
        row, column = save_label(cell), load_label(cell)
        rows[row] = (
            _LAYOUTS.index(cell.save_layout),
            len(cell.save_visibility),
            cell.save_visibility,
            cell.save_device,
        )
        columns[column] = (
            _LAYOUTS.index(cell.load_layout),
            len(cell.load_visibility),
            cell.load_visibility,
        )
        here = found.setdefault((row, column), {})
        here.setdefault(cell.recipe, Chip(cell.recipe)).results.append(result)
    chips: dict[tuple[str, str], list[Chip]] = {}
    for position, by_recipe in found.items():
        for chip in by_recipe.values():
            chip.results.sort(key=_axis_order)
        chips[position] = sorted(by_recipe.values(), key=lambda c: _CATALOGUE.index(c.recipe))
    return Grid(
        rows=sorted(rows, key=lambda label: (rows[label], label)),
        columns=sorted(columns, key=lambda label: (columns[label], label)),
        chips=chips,
    )
