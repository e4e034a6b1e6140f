from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.core.axes import Format, Layout, Wrapper
from harness.core.recipes import GOLDEN, RECIPES, RecipeKind, recipe, registrar

S, D = Layout.SINGLE, Layout.DP
W, H = Format.WEIGHTS, Format.WHOLE


@pytest.mark.parametrize(
    ("name", "save", "load", "fmt", "applies"),
    [
        ("as_saved", S, S, W, True),
        ("as_saved", D, D, W, True),
        ("as_saved", D, S, W, False),  # crossing layouts is unfixed_prefix
        ("as_saved", S, S, H, False),  # a weights recipe
        ("as_saved_whole", D, D, H, True),
        ("unfixed_prefix", S, D, W, True),
        ("unfixed_prefix", D, D, W, False),
        ("module_state_dict", D, S, W, True),
        ("module_state_dict", S, S, W, False),
        ("wrap_loader", D, S, W, True),
        ("wrap_loader", D, D, W, False),
        ("strip_prefix", D, D, W, True),
        ("strip_prefix", S, S, W, False),
        ("strip_prefix_unwrapped", S, D, W, True),
        ("strip_prefix_unwrapped", D, D, W, False),
        ("whole_module", D, S, H, True),
        ("whole_module", S, S, H, False),
        ("slice_prefix", S, D, W, True),
        ("replace_prefix", D, S, W, True),
        ("whole_default_load", S, S, H, True),
        ("whole_default_load", S, D, H, False),
        ("assign_method", D, D, H, True),
    ],
)
def test_applicability(name: str, save: Layout, load: Layout, fmt: Format, applies: bool) -> None:
    reason = RECIPES[name].skip_reason(save=save, load=load, fmt=fmt)
    assert (reason is None) is applies, reason


def test_training_applies_to_train_state_recipes_only() -> None:
    resume = RECIPES["resume"]
    assert (
        resume.skip_reason(save=S, load=D, fmt=Format.TRAIN_STATE, training="adam_steplr") is None
    )
    assert resume.skip_reason(save=S, load=D, fmt=Format.TRAIN_STATE) == (
        "recipe=resume needs a training regime"
    )
    assert RECIPES["as_saved"].skip_reason(save=S, load=S, fmt=W, training="sgd_steplr") == (
        "training=sgd_steplr applies to training-state recipes only"
    )


def test_skip_reason_names_the_recipe_and_the_axis() -> None:
    reason = RECIPES["wrap_loader"].skip_reason(save=S, load=S, fmt=W)
    assert reason == "recipe=wrap_loader needs save in {dp}, got single"


def test_catalogue_has_both_kinds_and_names_match_keys() -> None:
    assert {r.kind for r in RECIPES.values()} == set(RecipeKind)
    assert all(key == r.name for key, r in RECIPES.items())


def test_unknown_recipe_lists_the_catalogue() -> None:
    with pytest.raises(
        ValueError, match=r"x\.toml: unknown recipe 'strip'; the catalogue has as_saved"
    ):
        recipe("strip", "x.toml")


def test_the_catalogue_the_performers_and_the_oracle_name_the_same_recipes() -> None:
    from harness.core.oracle import _RULES
    from harness.worker.distributed_recipes import PERFORM as DISTRIBUTED
    from harness.worker.golden_load import GOLDEN_PERFORM
    from harness.worker.one_process_recipes import PERFORM

    # a golden cell is judged against its file's record (harness.certify.golden), not by an
    # oracle rule
    assert set(_RULES) | {GOLDEN} == set(RECIPES)
    assert GOLDEN not in _RULES
    assert set(GOLDEN_PERFORM) == {GOLDEN}
    one_process = set(PERFORM) | set(GOLDEN_PERFORM)
    assert one_process | set(DISTRIBUTED) == set(RECIPES)
    # a recipe is performed in one process where it loads into a layout of one process, and by
    # the distributed worker where it loads into a distributed layout (some do both)
    for name, spec in RECIPES.items():
        distributed = any(layout.distributed for layout in spec.load_layouts)
        single = any(not layout.distributed for layout in spec.load_layouts)
        assert (name in DISTRIBUTED) == distributed, name
        assert (name in one_process) == single, name


def test_a_registrar_refuses_an_unknown_or_repeated_recipe() -> None:
    registry: dict[str, Callable[[], None]] = {}
    files = registrar(registry, "here")

    @files("as_saved")
    def first() -> None: ...

    assert registry == {"as_saved": first}
    with pytest.raises(ValueError, match=r"here: .*second: recipe 'as_saved' is registered twice"):

        @files("as_saved")
        def second() -> None: ...

    with pytest.raises(ValueError, match=r"third: unknown recipe 'nope'; the catalogue has"):

        @files("nope")
        def third() -> None: ...


def test_wrappers_apply_where_a_recipe_says_so() -> None:
    compiled = (Wrapper.COMPILE, Wrapper.NONE)
    as_saved = RECIPES["as_saved"]
    reason = as_saved.skip_reason(
        save=Layout.SINGLE, load=Layout.SINGLE, fmt=Format.WEIGHTS, wrappers=compiled
    )
    assert reason == "recipe=as_saved applies to save wrappers {none}, got compile"
    unfixed = RECIPES["wrapper_unfixed_prefix"]
    assert (
        unfixed.skip_reason(save=Layout.DP, load=Layout.DP, fmt=Format.WEIGHTS, wrappers=compiled)
        is None
    )
    same = (Wrapper.CHECKPOINT, Wrapper.CHECKPOINT)
    assert unfixed.skip_reason(
        save=Layout.DP, load=Layout.DP, fmt=Format.WEIGHTS, wrappers=same
    ) == ("recipe=wrapper_unfixed_prefix is about a wrapper on one side only; both are checkpoint")
