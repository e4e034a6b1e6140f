"""The conformance matrix: every cell of the scenarios, run in real worker processes.

Correct recipes must PASS. Known-bad recipes must fail exactly as the oracle predicts (XFAIL),
or PASS where the oracle predicts that they work by accident (marked fragile).
"""

from __future__ import annotations

import pytest

from harness.cell import Cell
from harness.outcomes import Outcome
from harness.recipes import RecipeKind
from harness.results import CellResult


@pytest.mark.slow
def test_cell(ckpt_cell: Cell, ckpt_result: CellResult) -> None:
    assert ckpt_result.id == ckpt_cell.id
    if ckpt_cell.recipe_spec.kind is RecipeKind.CORRECT:
        assert ckpt_result.outcome is Outcome.PASS, ckpt_result.describe()
        return
    if ckpt_result.outcome is Outcome.PASS:
        assert ckpt_result.fragile, ckpt_result.describe()
        assert ckpt_result.expected.passes, ckpt_result.describe()
        return
    assert ckpt_result.outcome is Outcome.XFAIL, ckpt_result.describe()
    pytest.xfail(f"{ckpt_result.expected.error}: {ckpt_result.reason}")
