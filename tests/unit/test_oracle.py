"""The oracle's table: every recipe on every model and layout pair of the default matrix."""

from __future__ import annotations

import pytest

from harness.axes import Format, Layout
from harness.cell import Cell
from harness.matrix import expand
from harness.oracle import Expectation, expect, parse_torch_version
from harness.outcomes import ErrorClass
from harness.recipes import RecipeKind
from harness.scenarios import default_scenarios_dir, load_scenarios

S, D = Layout.SINGLE, Layout.DP
W, H = Format.WEIGHTS, Format.WHOLE
KEY, UNSAFE, DIFFER = ErrorClass.KEY_MISMATCH, ErrorClass.UNSAFE_GLOBAL, ErrorClass.WEIGHTS_DIFFER
NEW, OLD = (2, 14), (2, 5)


def cell(model: str, save: Layout, load: Layout, fmt: Format, recipe: str) -> Cell:
    return Cell(model=model, save_layout=save, load_layout=load, format=fmt, recipe=recipe)


TABLE = [
    # (model, save, load, format, recipe, torch, expected error or None)
    ("trap", S, S, W, "as_saved", NEW, None),
    ("trap_module", D, D, H, "as_saved_whole", NEW, None),
    ("resnet18", D, S, W, "module_state_dict", NEW, None),
    ("trap_module", D, S, W, "wrap_loader", NEW, None),
    ("trap_module", D, S, W, "strip_prefix", NEW, None),
    ("trap", D, S, H, "whole_module", NEW, None),
    ("trap", D, S, W, "unfixed_prefix", NEW, KEY),
    ("resnet18", S, D, W, "unfixed_prefix", NEW, KEY),
    # consume_prefix_in_state_dict_if_present eats a model's own top-level 'module' attribute
    ("trap_module", S, S, W, "strip_prefix_unwrapped", NEW, KEY),
    ("trap", S, S, W, "strip_prefix_unwrapped", NEW, None),
    ("trap", S, S, W, "save_method", NEW, UNSAFE),
    ("trap", S, S, W, "save_method", OLD, ErrorClass.NOT_A_STATE_DICT),
    ("trap", D, D, W, "assign_dict", NEW, DIFFER),
    ("resnet18", S, S, H, "assign_method", NEW, DIFFER),
    # k[7:] is harmless when every key carries the prefix, and destroys unprefixed keys
    ("trap_module", D, S, W, "slice_prefix", NEW, None),
    ("resnet18", S, S, W, "slice_prefix", NEW, KEY),
    # replace() corrupts any name containing 'module.' below the wrapper
    ("trap", D, S, W, "replace_prefix", NEW, KEY),
    ("trap_module", S, S, W, "replace_prefix", NEW, KEY),
    ("resnet18", D, D, W, "replace_prefix", NEW, None),
    ("trap", S, S, H, "whole_default_load", NEW, UNSAFE),
    ("trap", S, S, H, "whole_default_load", OLD, None),
]


@pytest.mark.parametrize(("model", "save", "load", "fmt", "recipe", "torch", "error"), TABLE)
def test_oracle_table(
    model: str,
    save: Layout,
    load: Layout,
    fmt: Format,
    recipe: str,
    torch: tuple[int, int],
    error: ErrorClass | None,
) -> None:
    expectation = expect(cell(model, save, load, fmt, recipe), torch_version=torch)
    assert expectation.error is error, expectation.reason
    assert expectation.tensor_device == "cpu"
    assert expectation.reason


def test_every_default_cell_has_a_rule_and_correct_recipes_always_pass() -> None:
    matrix = expand(load_scenarios(default_scenarios_dir()))
    for c in matrix.cells:
        expectation = expect(c, torch_version=NEW)
        if c.recipe_spec.kind is RecipeKind.CORRECT:
            assert expectation.passes, c.id


@pytest.mark.parametrize(
    ("text", "version"), [("2.14.1+cu130", (2, 14)), ("2.5.0", (2, 5)), ("10.0a0", (10, 0))]
)
def test_parse_torch_version(text: str, version: tuple[int, int]) -> None:
    assert parse_torch_version(text) == version


def test_parse_torch_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="cannot read a torch version from 'nightly'"):
        parse_torch_version("nightly")


def test_expectation_json_round_trip() -> None:
    for error in (None, KEY):
        expectation = Expectation(error=error, reason="r", tensor_device="cpu")
        assert Expectation.from_json(expectation.to_json()) == expectation
