from __future__ import annotations

from collections import Counter

from harness.axes import Format, Layout
from harness.matrix import Matrix, expand
from harness.recipes import RecipeKind
from harness.scenarios import Scenario, default_scenarios_dir, load_scenarios


def default() -> Matrix:
    return expand(load_scenarios(default_scenarios_dir()))


def test_default_matrix_shape() -> None:
    matrix = default()
    ids = [cell.id for cell in matrix.cells]
    assert len(ids) == len(set(ids)) == 90
    assert Counter(cell.model for cell in matrix.cells) == {
        "trap": 30,
        "trap_module": 30,
        "resnet18": 30,
    }
    kinds = Counter(cell.recipe_spec.kind for cell in matrix.cells)
    assert kinds[RecipeKind.CORRECT] == 30
    assert kinds[RecipeKind.KNOWN_BAD] == 60
    assert all(cell.save_visibility == () == cell.load_visibility for cell in matrix.cells)


def test_omitted_combinations_carry_reasons() -> None:
    matrix = default()
    omitted = {o.combination: o.reason for o in matrix.omitted}
    key = "model=trap-save=single[cpu]-load=single[cpu]-fmt=weights-recipe=wrap_loader"
    assert omitted[key] == "recipe=wrap_loader needs save in {dp}, got single"
    assert not set(omitted) & {cell.id for cell in matrix.cells}


def test_select_and_dedup() -> None:
    scenario = Scenario(
        name="s",
        description="",
        source="here",
        models=("trap",),
        save_layouts=(Layout.DP,),
        load_layouts=(Layout.SINGLE,),
        formats=(Format.WEIGHTS,),
        recipes=("strip_prefix", "slice_prefix"),
    )
    twice = expand([scenario, scenario])
    assert len(twice.cells) == 2
    picked = expand([scenario], select="recipe=slice")
    assert [c.recipe for c in picked.cells] == ["slice_prefix"]
