from __future__ import annotations

from collections import Counter

import pytest

from harness.core.axes import MESHES, Format, Layout, Wrapper
from harness.core.cell import layout_label
from harness.core.errors import UserError
from harness.core.matrix import Matrix, expand
from harness.core.recipes import RecipeKind
from harness.core.scenarios import Scenario, default_scenarios_dir, load_scenarios
from harness.core.selection import SelectionError


def default() -> Matrix:
    return expand(load_scenarios(default_scenarios_dir()))


def test_default_matrix_shape() -> None:
    scenarios = load_scenarios(default_scenarios_dir())
    assert len(expand(scenarios).cells) == 555
    # without GPUs, the distributed-on-gpus scenario runs its ranks with gloo on the CPU: 12 cells
    # the other scenarios lack (ddp and fsdp2 at 1 and 2 ranks); the rest is counted below
    matrix = expand([s for s in scenarios if s.name != "distributed-on-gpus"])
    ids = [cell.id for cell in matrix.cells]
    assert len(ids) == len(set(ids)) == 543
    # the DCP square: fsdp2 saved at N ranks, loaded by fsdp2 at M, N and M in 1..4; and fsdp2
    # at 1..3 ranks into one plain model by 3 recipes
    distributed = [
        c for c in matrix.cells if c.save_layout.distributed or c.load_layout.distributed
    ]
    square = {(c.save_world, c.load_world) for c in distributed if c.recipe == "dcp_reshard"}
    assert square == {(n, m) for n in range(1, 5) for m in range(1, 5)}
    into_one = Counter(
        c.recipe
        for c in distributed
        if c.save_layout is Layout.FSDP2
        and c.load_layout is Layout.SINGLE
        and c.save_wrapper == "none"
    )
    assert into_one == {
        # trap and tied, FSDP2 at 2 ranks through DCP's Hugging Face writer
        "safetensors_dcp_hf": 2,
        "safetensors_dcp_hf_in_place": 2,
        "dcp_no_dist": 3,
        "dcp_to_torch_save": 3,
        "full_state_dict": 3,
        "sharded_state_dict": 3,
    }
    # every save layout x every load layout has a full-state cell (the device meshes beyond
    # FSDP2's have their own scenarios, scenarios/mesh)
    pairs = {
        (c.save_layout, c.load_layout)
        for c in distributed + list(matrix.cells)
        if c.recipe == "full_state_dict"
    }
    layouts = set(Layout) - set(MESHES)
    assert pairs == {(save, load) for save in layouts for load in layouts}
    # DDP at 1 and 2 ranks, 2 models: 3 recipes into a plain model, 2 into DataParallel, and 2
    # into DDP and fsdp2 at 1 and 3 ranks each
    ddp = Counter(
        str(c.load_layout)
        for c in distributed
        if c.save_layout is Layout.DDP
        and c.recipe != "full_state_dict"
        and c.save_wrapper == "none"
    )
    assert ddp == {
        "single": 2 * 2 * 3,
        "dp": 2 * 2 * 2,
        "ddp": 2 * 2 * 2 * 2,
        "fsdp2": 2 * 2 * 2 * 2,
    }
    # the model changed since the save, per-rank state at 2 and 3 ranks both ways, and resume
    # (2 regimes, saved at 1 and 3 ranks, resumed at 2 and 4); a torch.save file into fsdp2 at 1..3
    others = Counter(
        c.recipe
        for c in distributed
        if c.recipe.startswith(("dcp_", "torch_save"))
        and c.save_wrapper == c.load_wrapper == "none"
    )
    assert others == {
        # the square's 16, and the cross-version scenario's fsdp2[dp2,tp2] -> tpx2
        "dcp_reshard": 16 + 1,
        "dcp_async_reshard": 1,  # the cross-version scenario's
        "dcp_no_dist": 3,
        "dcp_to_torch_save": 3,
        "dcp_extra_key": 1,
        "dcp_missing_key": 1,
        "dcp_dtype_template": 1,
        "dcp_partial_load": 1,
        "dcp_rank_state": 4,
        "dcp_rank_state_all": 4,
        # trap: 2 trainings x saved at 1, 3 x loaded at 2, 4; dropout: adamw, 3 -> 2, 4
        "dcp_resume": 2 * 2 * 2 + 2,
        "dcp_resume_without_rng": 2 * 2,  # trap and dropout, 3 -> 2, 4
        "torch_save_to_dcp": 3,
    }
    legacy = [c for c in matrix.cells if c.serialization == "legacy"]
    # legacy format: (2 models x 8 weights/whole cells) + 4 resume cells; the zip cells of the
    # cross-version scenario are cells of the other scenarios already
    assert len(legacy) == 2 * 8 + 4
    training = [
        c for c in matrix.cells if c.training and c.serialization == "zip" and c not in distributed
    ]
    # resume: 2 models x 4 layout pairs x 2 regimes; namespace args: 2 recipes x 2 layouts x 2;
    # random state: 2 models x 2 recipes x single -> single, dp, less the 2 trap resume cells
    # the resume scenario has
    assert len(training) == 16 + 8 + 6
    assert all(c.format == "train_state" for c in training)
    prefix = [
        c
        for c in matrix.cells
        if c.map_location == "none"
        and c.save_device == "cpu"
        and not c.training
        and c.serialization == "zip"
        and c not in distributed
        and c.recipe != "full_state_dict"  # the every-layout-pair scenario's one-process cells
        and c.format != "safetensors"
        and c.save_wrapper == c.load_wrapper == "none"
    ]
    models = ("trap", "trap_module", "resnet18", "tied", "mixed_dtypes", "weight_norm")
    assert Counter(c.model for c in prefix) == dict.fromkeys(models, 30)
    kinds = Counter(c.recipe_spec.kind for c in prefix)
    assert kinds[RecipeKind.CORRECT] == 10 * len(models)
    assert kinds[RecipeKind.KNOWN_BAD] == 20 * len(models)
    # device mapping: 2 formats x 3 saved devices x 8 map_locations, less the 2 cells that are
    # the prefix scenario's own (saved on cpu, no map_location)
    full_state = [
        c
        for c in matrix.cells
        if c.recipe == "full_state_dict"
        and c not in distributed
        and c.save_wrapper == c.load_wrapper == "none"
    ]
    assert len(full_state) == 4  # single and dp into single and dp
    # safetensors, 5 models: save_model at 4 layout pairs, save_file at the 2 same and the 2
    # crossed pairs, the prefix stripped from dp into 2; and the sharded layout, 2 models x 3
    safetensors = [c for c in matrix.cells if c.format == "safetensors" and c not in distributed]
    assert len(safetensors) == 5 * (4 + 2 + 2 + 2) + 2 * 3
    counted = len(prefix) + len(training) + len(legacy) + len(distributed) + len(full_state)
    counted += len(safetensors)
    # wrappers: torch.compile and checkpoint_wrapper, at save (2 x 9 recipes and layout pairs) and
    # at load (2 x 5), one side wrapped otherwise (2 x 6), the stack on trap_module (2), and
    # inside DDP at 2 ranks (2 x 4) and fsdp2 (2 x 5 at save, 2 at load; counted among the
    # distributed cells)
    wrapped = [c for c in matrix.cells if "none" not in (c.save_wrapper, c.load_wrapper)]
    one_side = [
        c
        for c in matrix.cells
        if (c.save_wrapper == "none") != (c.load_wrapper == "none") and c not in distributed
    ]
    assert len(wrapped) + len(one_side) == 2 * 9 + 2 * 5 + 2 * 6 + 2
    wrapped_ranks = [c for c in distributed if (c.save_wrapper, c.load_wrapper) != ("none", "none")]
    assert len(wrapped_ranks) == 2 * 4 + 2 * 5 + 2
    counted += len(wrapped) + len(one_side)
    assert len(matrix.cells) - counted == 2 * 3 * 8 - 2
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


def test_gpu_subsets_expand_the_visibility_axis() -> None:
    scenarios = load_scenarios(default_scenarios_dir())
    matrix = expand(scenarios, subsets=[(0,), (1,), (0, 1), (1, 0)])
    ids = {cell.id for cell in matrix.cells}
    assert "model=trap-save=dp[1,0]-load=dp[1,0]-fmt=weights-recipe=strip_prefix" in ids
    mapping = "model=trap-save=single[0,1]@cuda:1-load=single[1]-fmt=whole-recipe=as_saved_whole"
    assert mapping in ids
    assert f"{mapping}-map=cuda0" in ids
    # GPU runs only, but the CPU scenarios (distributed layouts' ranks with gloo at every world
    # size, and the cells that pair them with one-process layouts)
    on_gpus = expand([s for s in scenarios if s.visibility != "cpu"], subsets=[(0,), (1,)])
    assert on_gpus.cells
    assert not any(cell.save_visibility == () for cell in on_gpus.cells)
    on_cpu = expand([s for s in scenarios if s.visibility == "cpu"], subsets=[(0,), (1,)])
    assert all(c.save_visibility == () == c.load_visibility for c in on_cpu.cells)
    # a distributed layout on GPUs runs one rank per GPU of its subset
    ranks_on_gpus = [c for c in matrix.cells if c.save_layout.distributed and c.save_visibility]
    assert ranks_on_gpus
    assert all(len(c.save_visibility) == c.save_world for c in ranks_on_gpus)
    assert all(len(c.load_visibility) == c.load_world for c in ranks_on_gpus)
    reasons = {o.reason for o in matrix.omitted}
    assert "save device cuda:1 needs 2 GPUs in the save subset, it has 1" in reasons


def test_without_gpus_cuda_devices_are_simulated_tags() -> None:
    matrix = expand(load_scenarios(default_scenarios_dir()))
    tagged = [c for c in matrix.cells if c.save_device != "cpu"]
    assert tagged
    assert all(c.save_key.simulated_tag == c.save_device for c in tagged)
    assert len(matrix.cells) == 555


def test_resume_across_a_multi_gpu_dataparallel_split_is_left_out() -> None:
    matrix = expand(load_scenarios(default_scenarios_dir()), subsets=[(0,), (0, 1)])
    resumes = {c.id for c in matrix.cells if c.recipe == "resume"}
    assert (
        "model=trap-save=dp[0,1]-load=dp[0,1]-fmt=train_state-recipe=resume-train=sgd_steplr"
        in (resumes)
    )
    assert (
        "model=trap-save=single[0]-load=single[0]-fmt=train_state-recipe=resume-train=sgd_steplr"
        in (resumes)
    )
    assert (
        "model=trap-save=dp[0]-load=single[0]-fmt=train_state-recipe=resume-train=sgd_steplr"
        in (resumes)
    )
    assert not any(c.startswith("model=trap-save=single[0,1]-load=dp[0,1]") for c in resumes)
    reasons = {o.reason for o in matrix.omitted}
    assert any(
        r.startswith("resume equivalence needs the same training arithmetic") for r in reasons
    )


def test_world_sizes_apply_to_distributed_layouts_only() -> None:
    both = Scenario(
        name="w",
        description="",
        source="here",
        models=("trap",),
        save_layouts=(Layout.SINGLE, Layout.FSDP2),
        load_layouts=(Layout.FSDP2,),
        formats=(Format.DCP,),
        recipes=("dcp_reshard",),
        save_world_sizes=(1, 2),
        load_world_sizes=(2,),
    )
    matrix = expand([both], subsets=[(0,), (1, 0)])
    # with GPUs, the scenario's "same" visibility gives GPU subsets: one rank per GPU (NCCL)
    assert [c.id for c in matrix.cells] == [
        "model=trap-save=fsdp2x2[1,0]-load=fsdp2x2[1,0]-fmt=dcp-recipe=dcp_reshard"
    ]
    reasons = {o.reason for o in matrix.omitted}
    assert "load layout fsdp2 at 2 ranks runs one rank per GPU (NCCL); the subset [0] has 1" in (
        reasons
    )
    assert "save layout fsdp2 at 1 ranks runs one rank per GPU (NCCL); the subset [1,0] has 2" in (
        reasons
    )
    cpu = expand([both], subsets=[])
    assert [c.id for c in cpu.cells] == [
        "model=trap-save=fsdp2x1[cpu]-load=fsdp2x2[cpu]-fmt=dcp-recipe=dcp_reshard",
        "model=trap-save=fsdp2x2[cpu]-load=fsdp2x2[cpu]-fmt=dcp-recipe=dcp_reshard",
    ]
    reasons = {o.reason for o in cpu.omitted}
    assert "recipe=dcp_reshard needs save in {fsdp2,fsdp2_tp,hsdp,tp}, got single" in reasons
    plain = Scenario(
        name="p",
        description="",
        source="here",
        models=("trap",),
        save_layouts=(Layout.SINGLE,),
        load_layouts=(Layout.SINGLE,),
        formats=(Format.WEIGHTS,),
        recipes=("as_saved",),
        save_world_sizes=(1, 2),
    )
    one = expand([plain], subsets=[])
    assert len(one.cells) == 1
    [omitted] = one.omitted
    assert omitted.reason == (
        "save layout single runs one process; world sizes apply to ddp, fsdp2, tp, fsdp2_tp, hsdp"
    )


def test_wrappers_go_inside_every_layout() -> None:
    wrapped = Scenario(
        name="w",
        description="",
        source="here",
        models=("trap",),
        save_layouts=(Layout.DDP, Layout.FSDP2),
        load_layouts=(Layout.SINGLE,),
        formats=(Format.WEIGHTS,),
        recipes=("full_state_dict",),
        visibility="cpu",
        save_world_sizes=(2,),
        save_wrappers=(Wrapper.COMPILE,),
    )
    matrix = expand([wrapped])
    assert [c.id for c in matrix.cells] == [
        "model=trap-save=ddpx2+compile[cpu]-load=single[cpu]-fmt=weights-recipe=full_state_dict",
        "model=trap-save=fsdp2x2+compile[cpu]-load=single[cpu]-fmt=weights-recipe=full_state_dict",
    ]
    assert matrix.cells[1].save_key.id == "trap-fsdp2x2+compile[cpu]-full_state_dict"


def picked(expression: str) -> list[str]:
    """The ids of the shipped scenarios' cells that ``-k expression`` keeps."""
    return [
        cell.id for cell in expand(load_scenarios(default_scenarios_dir()), select=expression).cells
    ]


def test_select_takes_pytest_expressions() -> None:
    ids = [cell.id for cell in default().cells]
    fsdp2_not_compiled = [i for i in ids if "fsdp2" in i and "compile" not in i]
    assert 0 < len(fsdp2_not_compiled) < len([i for i in ids if "fsdp2" in i])
    assert picked("fsdp2 and not compile") == fsdp2_not_compiled
    assert picked("fsdp2 and not compile and fmt=dcp") == [
        i for i in fsdp2_not_compiled if "fmt=dcp" in i
    ]
    either = [i for i in ids if "fmt=dcp" in i or "fmt=safetensors" in i]
    assert picked("fmt=dcp or fmt=safetensors") == either
    # and binds tighter than or; parentheses change that
    grouped = picked("(fmt=dcp or fmt=safetensors) and not model=trap-")
    ungrouped = picked("fmt=dcp or fmt=safetensors and not model=trap-")
    assert grouped == [i for i in either if "model=trap-" not in i]
    assert ungrouped == [
        i for i in ids if "fmt=dcp" in i or ("fmt=safetensors" in i and "model=trap-" not in i)
    ]
    assert grouped != ungrouped
    assert picked("not not (fmt=dcp)") == [i for i in ids if "fmt=dcp" in i]
    # a blank expression keeps every cell, as no -k does
    assert picked("") == picked("  ") == ids


def test_select_words_match_whatever_their_case() -> None:
    ids = [cell.id for cell in default().cells]
    lower = [i for i in ids if "fmt=safetensors" in i]
    assert lower
    assert picked("FMT=SafeTensors") == lower
    # a user's model keeps its case in the id; a lower-case word still finds it
    scenario = Scenario(
        name="s",
        description="",
        source="here",
        models=("Team.Models:Tiny",),
        save_layouts=(Layout.SINGLE,),
        load_layouts=(Layout.SINGLE,),
        formats=(Format.WEIGHTS,),
        recipes=("as_saved",),
    )
    assert [c.model for c in expand([scenario], select="models:tiny and single").cells] == [
        "Team.Models:Tiny"
    ]
    # the operators are lower case, as pytest's: AND is a word, and two words need one between
    with pytest.raises(SelectionError, match="got 'AND'"):
        picked("fmt=dcp AND fsdp2")


@pytest.mark.parametrize(
    ("expression", "where"),
    [
        ("fsdp and", "at column 9, expected a word, 'not' or '(', got the end of the expression"),
        ("fsdp dcp", "at column 6, expected 'and', 'or' or the end, got 'dcp'"),
        ("(fsdp or dcp", "at column 13, expected ')', got the end of the expression"),
        ("fsdp)", "at column 5, expected 'and', 'or' or the end, got ')'"),
        ("not", "at column 4, expected a word, 'not' or '(', got the end of the expression"),
        ("and dcp", "at column 1, expected a word, 'not' or '(', got 'and'"),
    ],
)
def test_a_bad_select_expression_is_a_user_error(expression: str, where: str) -> None:
    with pytest.raises(SelectionError) as raised:
        picked(expression)
    assert isinstance(raised.value, UserError)
    assert str(raised.value) == (
        f"-k {expression!r}: {where} (-k takes words (a cell is kept if its id contains the "
        "word, whatever its case) joined by and, or, not and parentheses, as pytest's -k does)"
    )


def test_mesh_layouts_need_their_shape_and_a_tensor_parallel_plan() -> None:
    scenario = Scenario(
        name="m",
        description="",
        source="here",
        models=("block", "trap"),
        save_layouts=(Layout.TP, Layout.FSDP2_TP, Layout.HSDP),
        load_layouts=(Layout.FSDP2,),
        formats=(Format.DCP,),
        recipes=("dcp_reshard",),
        save_world_sizes=(2, 4),
        load_world_sizes=(2,),
    )
    matrix = expand([scenario], subsets=[])
    tail = "-load=fsdp2x2[cpu]-fmt=dcp-recipe=dcp_reshard"
    assert [c.id for c in matrix.cells] == [
        f"model=block-save=tpx2[cpu]{tail}",
        f"model=block-save=tpx4[cpu]{tail}",
        f"model=block-save=fsdp2[dp2,tp2][cpu]{tail}",
        f"model=block-save=hsdp[rep2,shard2][cpu]{tail}",
        f"model=trap-save=hsdp[rep2,shard2][cpu]{tail}",  # HSDP needs no plan
    ]
    reasons = {o.reason for o in matrix.omitted}
    assert (
        "save layout fsdp2_tp: a 2-D mesh needs an even world size of at least 4 (2 or more "
        "ranks on each dimension), not 2"
    ) in reasons
    assert (
        "save layout tp shards a model by its tensor-parallel plan; trap has none (the zoo's "
        "block has)"
    ) in reasons


def test_the_mesh_scenarios_square_every_mesh_shape() -> None:
    cells = expand(load_scenarios(default_scenarios_dir() / "mesh"), subsets=[]).cells
    shapes = {"fsdp2x2", "fsdp2x4", "tpx2", "tpx4", "fsdp2[dp2,tp2]", "hsdp[rep2,shard2]"}
    shape = layout_label
    square = [
        (shape(c.save_layout, c.save_world), shape(c.load_layout, c.load_world))
        for c in cells
        if c.recipe == "dcp_reshard"
    ]
    assert sorted(square) == sorted((a, b) for a in shapes for b in shapes)
    into_one = {shape(c.save_layout, c.save_world) for c in cells if c.recipe == "dcp_no_dist"}
    onto = {shape(c.load_layout, c.load_world) for c in cells if c.recipe == "torch_save_to_dcp"}
    assert into_one == onto == shapes
    for executor in ("dcp_async_reshard", "dcp_async_process_reshard"):
        saved_async = {shape(c.save_layout, c.save_world) for c in cells if c.recipe == executor}
        assert saved_async == shapes, executor
    # a bfloat16 template on another mesh, another plan (6), an uneven split (2), local shards
    # stitched (6), training resumed between the shapes of one tensor-parallel degree (14)
    # the process executor (6), async saves interrupted in flight: marked after or before, or
    # loaded in flight (9)
    assert len(cells) == 36 + 6 + 6 + 6 + 1 + 6 + 2 + 6 + 14 + 6 + 9 + 6  # meta models: 6
    resumed = {
        (shape(c.save_layout, c.save_world), shape(c.load_layout, c.load_world))
        for c in cells
        if c.recipe == "dcp_resume"
    }
    degrees = [
        {"fsdp2x2", "fsdp2x4", "hsdp[rep2,shard2]"},
        {"tpx2", "fsdp2[dp2,tp2]"},
        {"tpx4"},
    ]
    assert resumed == {(a, b) for degree in degrees for a in degree for b in degree}
    assert {c.model for c in cells} == {"block"}
    stitched = {
        shape(c.save_layout, c.save_world) for c in cells if c.recipe == "local_shards_stitched"
    }
    assert stitched == shapes


def test_only_the_uneven_split_recipe_loads_onto_a_degree_that_does_not_divide_the_heads() -> None:
    scenario = Scenario(
        name="m",
        description="",
        source="here",
        models=("block",),
        save_layouts=(Layout.FSDP2, Layout.TP),
        load_layouts=(Layout.TP,),
        formats=(Format.DCP,),
        recipes=("dcp_reshard", "dcp_uneven_split"),
        save_world_sizes=(2, 3),
        load_world_sizes=(2, 3),
    )
    matrix = expand([scenario], subsets=[])
    kept = {
        (c.recipe, layout_label(c.save_layout, c.save_world), layout_label(c.load_layout, 2))
        for c in matrix.cells
        if c.load_world == 2
    }
    uneven = {
        (c.recipe, layout_label(c.save_layout, c.save_world))
        for c in matrix.cells
        if c.load_world == 3
    }
    # saving on tpx3 is left out for both; dcp_reshard loads onto tpx2 only, the uneven one
    # onto tpx3 only
    assert kept == {("dcp_reshard", save, "tpx2") for save in ("fsdp2x2", "fsdp2x3", "tpx2")}
    assert uneven == {("dcp_uneven_split", save) for save in ("fsdp2x2", "fsdp2x3", "tpx2")}
    reasons = {o.reason for o in matrix.omitted}
    assert (
        "save layout tpx3 splits block's 4 heads over 3 ranks, unevenly "
        "(recipe=dcp_uneven_split is the cell for that)"
    ) in reasons
    assert (
        "recipe=dcp_uneven_split is about a tensor-parallel degree that does not divide "
        "block's 4 heads; load=tpx2 divides them"
    ) in reasons


def test_training_resumes_only_between_meshes_of_one_tensor_parallel_degree() -> None:
    scenario = Scenario(
        name="m",
        description="",
        source="here",
        models=("block",),
        save_layouts=(Layout.TP,),
        load_layouts=(Layout.TP, Layout.FSDP2_TP),
        formats=(Format.DCP,),
        recipes=("dcp_resume",),
        trainings=("adamw_onecycle",),
        save_world_sizes=(2,),
        load_world_sizes=(4,),
    )
    matrix = expand([scenario], subsets=[])
    assert [layout_label(c.load_layout, c.load_world) for c in matrix.cells] == ["fsdp2[dp2,tp2]"]
    assert (
        "resume equivalence needs the same training arithmetic: tensor parallelism over 2 "
        "rank(s) at the save and 4 at the load sums each layer's products in other parts (the "
        "checkpoint itself reshards between them bitwise: dcp_reshard)"
    ) in {o.reason for o in matrix.omitted}
