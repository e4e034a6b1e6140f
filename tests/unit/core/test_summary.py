from __future__ import annotations

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.oracle import Expectation
from harness.core.outcomes import ErrorClass, Outcome, exit_code
from harness.core.results import CellResult
from harness.core.summary import progress_line, summary_table


def result(recipe: str, outcome: Outcome, expected: ErrorClass | None = None) -> CellResult:
    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe=recipe,
    )
    return CellResult(
        cell=cell,
        outcome=outcome,
        expected=Expectation(error=expected, reason=f"why {recipe}", tensor_device="cpu"),
        reason=f"{outcome} reason",
        observed=None,
        error=None,
        duration_s=1.25,
    )


def test_table_counts_per_recipe_in_catalogue_order_and_lists_fragile_and_failures() -> None:
    text = summary_table(
        [
            result("slice_prefix", Outcome.PASS),
            result("strip_prefix", Outcome.PASS),
            result("strip_prefix", Outcome.ERROR),
            result("replace_prefix", Outcome.XFAIL, ErrorClass.KEY_MISMATCH),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "recipe",
        "kind",
        "PASS",
        "XFAIL",
        "FAIL",
        "XPASS",
        "ERROR",
        "SKIP",
        "fragile",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:5]}
    assert list(rows) == ["strip_prefix", "slice_prefix", "replace_prefix"]
    assert rows["strip_prefix"] == ["correct", "1", "0", "0", "0", "1", "0"]
    assert rows["slice_prefix"] == ["known_bad", "1", "0", "0", "0", "0", "0", "1"]
    assert "Fragile: known-bad recipes that worked here by accident:" in text
    assert "why slice_prefix" in text
    assert "1 cell(s) failed the run:" in text
    assert "ERROR reason" in text


def test_skipped_cells_are_counted_with_their_reason() -> None:
    text = summary_table([result("strip_prefix", Outcome.SKIP), result("as_saved", Outcome.SKIP)])
    assert "Skipped:\n  2 cell(s): SKIP reason" in text
    assert "failed the run" not in text


def test_progress_line_and_exit_code() -> None:
    line = progress_line(result("strip_prefix", Outcome.PASS), 3, 90)
    assert line.startswith("[ 3/90] PASS     1.2s  model=trap")
    assert exit_code([Outcome.PASS, Outcome.XFAIL, Outcome.SKIP]) == 0
    assert all(
        exit_code([Outcome.PASS, o]) == 1 for o in (Outcome.FAIL, Outcome.XPASS, Outcome.ERROR)
    )
