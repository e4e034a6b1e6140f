"""The conformance matrix: every cell of the scenarios, run in real worker processes.

Every cell must end as the oracle predicts: PASS where it predicts a clean load (bitwise-equal
tensors on the expected devices), XFAIL where it predicts a named error and PyTorch raised exactly
that. A correct recipe fails only where a storage cannot be restored to its device (a CUDA
checkpoint without a GPU, or a device index the loader cannot see), or where a whole DataParallel
model's forward needs more GPUs than the loader sees, or where the model cannot be saved that way
(a parametrized module refuses to be pickled whole, safetensors' save_file refuses tied weights,
DCP's Hugging Face consolidation refuses an integer tensor).
A known-bad recipe PASSes only
where the oracle predicts that it works by accident (marked fragile).
"""

from __future__ import annotations

import pytest

from harness.core.cell import Cell
from harness.core.outcomes import ErrorClass, Outcome
from harness.core.recipes import RecipeKind
from harness.core.results import CellResult

DEVICE_ERRORS = {
    ErrorClass.CUDA_UNAVAILABLE,
    ErrorClass.DEVICE_INDEX_OUT_OF_RANGE,
    ErrorClass.DP_DEVICE_MISSING,
}
# ... or where the model cannot be saved that way at all (a parametrized module pickled whole,
# tied weights through safetensors' save_file, an integer tensor through DCP's Hugging Face
# consolidation)
MODEL_ERRORS = {ErrorClass.NOT_PICKLABLE, ErrorClass.SHARED_TENSORS, ErrorClass.UNSUPPORTED_DTYPE}


@pytest.mark.slow
def test_cell(ckpt_cell: Cell, ckpt_result: CellResult) -> None:
    assert ckpt_result.id == ckpt_cell.id
    if ckpt_result.outcome is Outcome.SKIP:
        pytest.skip(ckpt_result.reason)
    expected = ckpt_result.expected
    if expected.passes:
        assert ckpt_result.outcome is Outcome.PASS, ckpt_result.describe()
        if ckpt_cell.recipe_spec.kind is RecipeKind.KNOWN_BAD:
            assert ckpt_result.fragile, ckpt_result.describe()
        return
    if ckpt_cell.recipe_spec.kind is RecipeKind.CORRECT:
        assert expected.error in DEVICE_ERRORS | MODEL_ERRORS, ckpt_result.describe()
    assert ckpt_result.outcome is Outcome.XFAIL, ckpt_result.describe()
    pytest.xfail(f"{expected.error}: {ckpt_result.reason}")
