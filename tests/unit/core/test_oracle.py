"""The oracle's table: every recipe on every model and layout pair of the default matrix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.core.axes import Format, Layout, SaveVariant, Wrapper
from harness.core.cell import Cell
from harness.core.matrix import expand
from harness.core.oracle import Expectation, expect, parse_torch_version
from harness.core.outcomes import ErrorClass
from harness.core.recipes import RecipeKind
from harness.core.scenarios import default_scenarios_dir, load_scenarios
from harness.core.zoo import ModelTraits

S, D = Layout.SINGLE, Layout.DP
W, H, T = Format.WEIGHTS, Format.WHOLE, Format.TRAIN_STATE
KEY, UNSAFE, DIFFER = ErrorClass.KEY_MISMATCH, ErrorClass.UNSAFE_GLOBAL, ErrorClass.WEIGHTS_DIFFER
NEW, OLD = (2, 14), (2, 5)


def cell(model: str, save: Layout, load: Layout, fmt: Format, recipe: str) -> Cell:
    training = "sgd_steplr" if fmt is Format.TRAIN_STATE else ""
    return Cell(
        model=model,
        save_layout=save,
        load_layout=load,
        format=fmt,
        recipe=recipe,
        training=training,
    )


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
    ("trap", S, D, T, "resume", NEW, None),
    ("trap", D, D, T, "resume_safe_globals", NEW, None),
    ("trap", S, S, T, "resume_namespace_args", NEW, UNSAFE),
    # loaded with weights_only=True explicitly: refused under every release
    ("trap", S, S, T, "resume_namespace_args", OLD, UNSAFE),
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


def test_correct_recipes_fail_only_where_a_storage_cannot_be_restored() -> None:
    matrix = expand(load_scenarios(default_scenarios_dir()))
    for c in matrix.cells:
        expectation = expect(c, torch_version=NEW)
        if c.recipe_spec.kind is RecipeKind.CORRECT and not expectation.passes:
            # or where the model itself cannot be saved that way: a parametrized model pickled
            # whole, tied weights through safetensors' save_file, an integer tensor through
            # DCP's Hugging Face consolidation
            variant = c.recipe_spec.save_variant
            model_errors = {
                ErrorClass.NOT_PICKLABLE: c.model == "weight_norm" and variant is SaveVariant.WHOLE,
                ErrorClass.SHARED_TENSORS: c.model == "tied"
                and variant is SaveVariant.SAFETENSORS_FILE,
                ErrorClass.UNSUPPORTED_DTYPE: c.model == "trap"
                and variant is SaveVariant.SAFETENSORS_DCP_HF,
            }
            if expectation.error in model_errors:
                assert model_errors[expectation.error], c.id
            else:
                assert expectation.error in {ErrorClass.CUDA_UNAVAILABLE, RANGE, DP_MISSING}, c.id


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


UNAVAILABLE, RANGE = ErrorClass.CUDA_UNAVAILABLE, ErrorClass.DEVICE_INDEX_OUT_OF_RANGE
DP_MISSING = ErrorClass.DP_DEVICE_MISSING

# (save layout, save subset, saved device, load subset, format/recipe, map_location, torch,
#  expected error, expected tensor device)
CUDA_TABLE = [
    # storages return to their saved logical index
    (S, (0,), "cuda:0", (0,), "as_saved_whole", "none", NEW, None, "cuda:0"),
    (S, (0,), "cuda:0", (1,), "as_saved_whole", "none", NEW, None, "cuda:0"),
    (S, (0, 1), "cuda:1", (1, 0), "as_saved_whole", "none", NEW, None, "cuda:1"),
    (S, (0, 1), "cuda:1", (0, 1, 2, 3), "as_saved_whole", "none", NEW, None, "cuda:1"),
    # ... and fail when that index is not visible, or no GPU is
    (S, (0, 1), "cuda:1", (0,), "as_saved_whole", "none", NEW, RANGE, "cuda:1"),
    (S, (0,), "cuda:0", (), "as_saved_whole", "none", NEW, UNAVAILABLE, "cuda:0"),
    (S, (0,), "cuda:0", (), "as_saved", "none", NEW, UNAVAILABLE, "cpu"),
    (D, (0, 1), "cuda:0", (), "as_saved", "none", NEW, UNAVAILABLE, "cpu"),
    # map_location rescues
    (S, (0,), "cuda:0", (), "as_saved_whole", "cpu", NEW, None, "cpu"),
    (S, (0, 1), "cuda:1", (0,), "as_saved_whole", "cuda0", NEW, None, "cuda:0"),
    (S, (0, 1), "cuda:1", (0,), "as_saved_whole", "device_cuda0", NEW, None, "cuda:0"),
    (S, (0, 1), "cuda:1", (0,), "as_saved_whole", "remap_saved_to_cuda0", NEW, None, "cuda:0"),
    (S, (0, 1), "cuda:1", (), "as_saved_whole", "remap_saved_to_cpu", NEW, None, "cpu"),
    (S, (0, 1), "cuda:1", (), "as_saved_whole", "callable_identity", NEW, None, "cpu"),
    # a remap dict matches only the exact saved tag
    (S, (0, 1), "cuda:1", (), "as_saved_whole", "remap_cuda0_to_cpu", NEW, UNAVAILABLE, "cuda:1"),
    (S, (0,), "cuda:0", (), "as_saved_whole", "remap_cuda0_to_cpu", NEW, None, "cpu"),
    # a weights load lands on the loader's model, wherever the storages went
    (S, (0, 1), "cuda:1", (2,), "as_saved", "cpu", NEW, None, "cuda:0"),
    (S, (), "cpu", (3,), "as_saved", "none", NEW, None, "cuda:0"),
    # weights_only refuses the global before any storage is read
    (S, (0,), "cuda:0", (), "save_method", "none", NEW, ErrorClass.UNSAFE_GLOBAL, "cpu"),
    (S, (0,), "cuda:0", (), "whole_default_load", "none", NEW, ErrorClass.UNSAFE_GLOBAL, "cuda:0"),
    (S, (0,), "cuda:0", (), "whole_default_load", "none", OLD, UNAVAILABLE, "cuda:0"),
    # the storage error comes before a recipe's own failure
    (S, (0,), "cuda:0", (), "assign_method", "none", NEW, UNAVAILABLE, "cpu"),
    (S, (0,), "cuda:0", (0,), "assign_method", "none", NEW, DIFFER, "cuda:0"),
    # a whole DataParallel model keeps its saver's device_ids: its forward needs that many GPUs
    (D, (0, 1), "cuda:0", (0, 1), "as_saved_whole", "none", NEW, None, "cuda:0"),
    (D, (0, 1), "cuda:0", (1, 0), "as_saved_whole", "none", NEW, None, "cuda:0"),
    (D, (0, 1), "cuda:0", (0, 1, 2, 3), "as_saved_whole", "none", NEW, None, "cuda:0"),
    (D, (0, 1), "cuda:0", (1,), "as_saved_whole", "none", NEW, DP_MISSING, "cuda:0"),
    (D, (0, 1, 2), "cuda:0", (2, 3), "as_saved_whole", "none", NEW, DP_MISSING, "cuda:0"),
    (D, (0,), "cuda:0", (1,), "as_saved_whole", "none", NEW, None, "cuda:0"),
    (D, (0, 1), "cuda:0", (), "as_saved_whole", "none", NEW, UNAVAILABLE, "cuda:0"),
    # a simulated tag on the CPU fallback follows the same rules
    (S, (), "cuda:1", (), "as_saved_whole", "none", NEW, UNAVAILABLE, "cuda:1"),
    (S, (), "cuda:1", (), "as_saved_whole", "remap_saved_to_cpu", NEW, None, "cpu"),
]

RECIPE_FORMAT = {
    "as_saved_whole": H,
    "as_saved": W,
    "save_method": W,
    "whole_default_load": H,
    "assign_method": H,
}


@pytest.mark.parametrize(
    ("layout", "save_vis", "device", "load_vis", "recipe", "mapping", "torch", "error", "where"),
    CUDA_TABLE,
)
def test_cuda_oracle_table(
    layout: Layout,
    save_vis: tuple[int, ...],
    device: str,
    load_vis: tuple[int, ...],
    recipe: str,
    mapping: str,
    torch: tuple[int, int],
    error: ErrorClass | None,
    where: str,
) -> None:
    c = Cell(
        model="trap",
        save_layout=layout,
        load_layout=layout,
        format=RECIPE_FORMAT[recipe],
        recipe=recipe,
        save_visibility=save_vis,
        load_visibility=load_vis,
        save_device=device,
        map_location=mapping,
    )
    expectation = expect(c, torch_version=torch)
    assert expectation.error is error, expectation.reason
    assert expectation.tensor_device == where


def test_cuda_table_covers_every_class() -> None:
    from harness.core.devices import MAP_LOCATIONS

    assert {row[5] for row in CUDA_TABLE} == set(MAP_LOCATIONS)
    loads = {
        ("none" if not row[3] else "fewer" if int(row[2][-1]) >= len(row[3]) else "enough")
        for row in CUDA_TABLE
        if row[2].startswith("cuda")
    }
    assert loads == {"none", "fewer", "enough"}
    assert {row[4] for row in CUDA_TABLE} >= {"as_saved", "as_saved_whole"}


@pytest.mark.parametrize("load_vis", [(1,), (2, 3), (1, 0), ()])
def test_taking_module_of_a_whole_dataparallel_model_works_under_any_gpu_subset(
    load_vis: tuple[int, ...],
) -> None:
    c = Cell(
        model="trap",
        save_layout=D,
        load_layout=S,
        format=H,
        recipe="whole_module",
        save_visibility=(0, 1, 2),
        load_visibility=load_vis,
        save_device="cuda:0",
    )
    expectation = expect(c, torch_version=NEW)
    assert expectation.error is (UNAVAILABLE if not load_vis else None), expectation.reason


def test_the_dataparallel_claim_is_stated_on_the_simulated_gpu_matrix() -> None:
    from harness.core.visibility import parse_policy, subsets
    from harness.run.inventory import simulated

    gpus = simulated(4).indices
    matrix = expand(
        load_scenarios(default_scenarios_dir()), subsets=subsets(parse_policy("minimal"), gpus)
    )
    claims = [c for c in matrix.cells if expect(c, torch_version=NEW).error is DP_MISSING]
    assert claims, "the cross scenario should hold whole DataParallel models on fewer GPUs"
    for c in claims:
        assert c.recipe == "as_saved_whole"
        assert 0 < len(c.load_visibility) < len(c.save_visibility), c.id


F2, DDP = Layout.FSDP2, Layout.DDP
DCP = Format.DCP
SET_DIFFERS = ErrorClass.TENSOR_SET_DIFFERS

# (save layout, N, load layout, M, format, recipe, expected error or None)
DISTRIBUTED_TABLE = [
    (F2, 3, F2, 2, DCP, "dcp_reshard", None),
    (F2, 2, S, 1, DCP, "dcp_no_dist", None),
    # the full state goes between any two layouts
    (S, 1, F2, 3, W, "full_state_dict", None),
    (DDP, 2, D, 1, W, "full_state_dict", None),
    (F2, 3, DDP, 2, W, "full_state_dict", None),
    (DDP, 2, F2, 3, W, "ddp_strip_prefix", None),
    (DDP, 2, S, 1, W, "ddp_unfixed_prefix", KEY),
    (S, 1, F2, 4, W, "torch_save_to_dcp", None),
    (F2, 2, S, 1, W, "sharded_state_dict", ErrorClass.SHARDED_TENSOR),
    # a model that changed since the save
    (F2, 3, F2, 2, DCP, "dcp_extra_key", KEY),
    (F2, 3, F2, 2, DCP, "dcp_partial_load", None),
    (F2, 3, F2, 2, DCP, "dcp_missing_key", SET_DIFFERS),
    # rank-indexed state: kept at the same world size, dropped at fewer ranks, an error at more
    (F2, 2, F2, 2, DCP, "dcp_rank_state", None),
    (F2, 4, F2, 2, DCP, "dcp_rank_state", SET_DIFFERS),
    (F2, 2, F2, 3, DCP, "dcp_rank_state", KEY),
    # every rank's state under every rank's name: all of it read back at any world size
    (F2, 3, F2, 2, DCP, "dcp_rank_state_all", None),
    (F2, 2, F2, 3, DCP, "dcp_rank_state_all", None),
]


TP, F2TP, HSDP = Layout.TP, Layout.FSDP2_TP, Layout.HSDP
MESH_FAILED = ErrorClass.MESH_FORWARD_FAILED

# The zoo's block on device meshes: (save layout, N, load layout, M, format, recipe, error)
MESH_TABLE = [
    (TP, 4, F2TP, 4, DCP, "dcp_reshard", None),
    (TP, 2, TP, 2, DCP, "dcp_other_plan", MESH_FAILED),
    (F2TP, 4, TP, 2, DCP, "dcp_other_plan", MESH_FAILED),
    (F2, 2, TP, 3, DCP, "dcp_uneven_split", MESH_FAILED),
    # rank order is each tensor's order on a 1-D mesh and under HSDP, not on [dp, tp]
    (F2, 3, S, 1, W, "local_shards_stitched", None),
    (TP, 4, S, 1, W, "local_shards_stitched", None),
    (HSDP, 4, S, 1, W, "local_shards_stitched", None),
    (F2TP, 4, S, 1, W, "local_shards_stitched", ErrorClass.WEIGHTS_DIFFER),
    # an asynchronous save interrupted in flight: the marker decides
    (F2, 2, F2, 2, DCP, "dcp_async_interrupted", None),
    (F2TP, 4, F2, 2, DCP, "dcp_async_early_marker", ErrorClass.INCOMPLETE_CHECKPOINT),
    (F2, 2, F2, 2, DCP, "dcp_async_load_in_flight", ErrorClass.INCOMPLETE_CHECKPOINT),
    (F2TP, 4, F2, 2, DCP, "dcp_async_process_reshard", None),
    # a model built on the meta device, into one process
    (F2TP, 4, S, 1, DCP, "dcp_meta_to_empty", None),
    (TP, 2, S, 1, DCP, "dcp_meta_template", ErrorClass.META_TEMPLATE),
]


@pytest.mark.parametrize(
    ("model", "save", "save_world", "load", "load_world", "fmt", "recipe", "error"),
    [("trap", *row) for row in DISTRIBUTED_TABLE] + [("block", *row) for row in MESH_TABLE],
)
def test_distributed_oracle_table(
    model: str,
    save: Layout,
    save_world: int,
    load: Layout,
    load_world: int,
    fmt: Format,
    recipe: str,
    error: ErrorClass | None,
) -> None:
    c = Cell(
        model=model,
        save_layout=save,
        load_layout=load,
        format=fmt,
        recipe=recipe,
        save_world=save_world,
        load_world=load_world,
    )
    expectation = expect(c, torch_version=NEW)
    assert expectation.error is error, expectation.reason
    assert expectation.tensor_device == "cpu"


ST = Format.SAFETENSORS
# (model, save layout, N, recipe, expected error or None): the save_pretrained layout
SHARDED_SAFETENSORS = [
    ("tied", S, 1, "safetensors_index", None),
    ("tied", S, 1, "safetensors_index_strict", KEY),
    ("trap", S, 1, "safetensors_index_strict", None),  # no tie to miss (fragile)
    ("trap", S, 1, "safetensors_shards_lenient", ErrorClass.WEIGHTS_DIFFER),
    ("tied", F2, 2, "safetensors_dcp_hf", None),
    ("trap", F2, 2, "safetensors_dcp_hf", ErrorClass.UNSUPPORTED_DTYPE),  # BatchNorm's int64
    ("tied", F2, 2, "safetensors_dcp_hf_in_place", ErrorClass.CORRUPT_FILE),
    ("trap", F2, 2, "safetensors_dcp_hf_in_place", ErrorClass.CORRUPT_FILE),  # no dtype read
]


@pytest.mark.parametrize(("model", "save", "save_world", "recipe", "error"), SHARDED_SAFETENSORS)
def test_sharded_safetensors_oracle_table(
    model: str, save: Layout, save_world: int, recipe: str, error: ErrorClass | None
) -> None:
    c = Cell(
        model=model,
        save_layout=save,
        load_layout=S,
        format=ST,
        recipe=recipe,
        save_world=save_world,
    )
    assert expect(c, torch_version=NEW).error is error


MESH_RESUMED = [(TP, 2, F2TP, 4), (HSDP, 4, F2, 2), (F2, 4, HSDP, 4)]


@pytest.mark.parametrize(("save", "save_world", "load", "load_world"), MESH_RESUMED)
def test_training_resumed_on_another_mesh_passes(
    save: Layout, save_world: int, load: Layout, load_world: int
) -> None:
    c = Cell(
        model="block",
        save_layout=save,
        load_layout=load,
        format=DCP,
        recipe="dcp_resume",
        training="adamw_onecycle",
        save_world=save_world,
        load_world=load_world,
    )
    expectation = expect(c, torch_version=NEW)
    assert expectation.passes
    assert "the same tensor-parallel degree" in expectation.reason


def test_an_uneven_split_names_the_heads_and_the_degree() -> None:
    c = Cell(
        model="block",
        save_layout=F2,
        load_layout=TP,
        format=DCP,
        recipe="dcp_uneven_split",
        save_world=2,
        load_world=3,
    )
    assert "3 tensor-parallel ranks split block's 4 heads" in expect(c, torch_version=NEW).reason


def test_rank_state_names_the_ranks_whose_state_is_dropped() -> None:
    c = Cell(
        model="trap",
        save_layout=F2,
        load_layout=F2,
        format=DCP,
        recipe="dcp_rank_state",
        save_world=4,
        load_world=2,
    )
    assert "ranks 2..3" in expect(c, torch_version=NEW).reason


def test_resume_across_world_sizes_passes() -> None:
    c = Cell(
        model="trap",
        save_layout=F2,
        load_layout=F2,
        format=DCP,
        recipe="dcp_resume",
        training="sgd_steplr",
        save_world=3,
        load_world=2,
    )
    expectation = expect(c, torch_version=NEW)
    assert expectation.passes
    assert "resumed at 2 ranks" in expectation.reason


def test_a_users_model_needs_measured_traits() -> None:
    mine = Cell(
        model="my_pkg.models:build",
        save_layout=S,
        load_layout=S,
        format=W,
        recipe="replace_prefix",
    )
    with pytest.raises(ValueError, match=r"the traits of my_pkg\.models:build are measured"):
        expect(mine, torch_version=NEW)
    nested = ModelTraits(top_level_module_attr=False, nested_module_dot=True)
    assert expect(mine, torch_version=NEW, traits=nested).error is KEY
    plain = ModelTraits(top_level_module_attr=False, nested_module_dot=False)
    assert expect(mine, torch_version=NEW, traits=plain).passes


@pytest.mark.parametrize(
    ("fmt", "recipe", "error"),
    [
        (H, "as_saved_whole", ErrorClass.NOT_PICKLABLE),
        (H, "whole_module", ErrorClass.NOT_PICKLABLE),
        (W, "save_method", ErrorClass.NOT_PICKLABLE),
        (W, "as_saved", None),
        (T, "resume", None),
    ],
)
def test_a_parametrized_model_is_saved_through_its_state_dict_only(
    fmt: Format, recipe: str, error: ErrorClass | None
) -> None:
    save = D if recipe == "whole_module" else S
    assert expect(cell("weight_norm", save, S, fmt, recipe), torch_version=NEW).error is error


ST = Format.SAFETENSORS


@pytest.mark.parametrize(
    ("model", "save", "load", "recipe", "error"),
    [
        ("tied", S, D, "safetensors_model", None),
        ("tied", S, S, "safetensors_file", ErrorClass.SHARED_TENSORS),
        ("tied", D, S, "safetensors_strip_prefix", ErrorClass.SHARED_TENSORS),
        ("trap", S, S, "safetensors_file", None),  # fragile: nothing shares memory
        ("trap", D, S, "safetensors_strip_prefix", None),
        ("trap", D, S, "safetensors_unfixed_prefix", KEY),
        ("tied", S, D, "safetensors_unfixed_prefix", ErrorClass.SHARED_TENSORS),
    ],
)
def test_safetensors_refuses_shared_memory_in_save_file_only(
    model: str, save: Layout, load: Layout, recipe: str, error: ErrorClass | None
) -> None:
    assert expect(cell(model, save, load, ST, recipe), torch_version=NEW).error is error


def test_a_safetensors_file_carries_no_device() -> None:
    on_gpu = Cell(
        model="trap",
        save_layout=S,
        load_layout=S,
        format=ST,
        recipe="safetensors_model",
        save_visibility=(0,),
        save_device="cuda:0",
    )
    assert expect(on_gpu, torch_version=NEW).passes  # a CPU loader: load_file(device="cpu")


@pytest.mark.parametrize(
    ("save_wrapper", "load_wrapper", "error"),
    [
        (Wrapper.COMPILE, Wrapper.NONE, KEY),
        (Wrapper.NONE, Wrapper.COMPILE, KEY),
        (Wrapper.COMPILE, Wrapper.CHECKPOINT, KEY),
        # checkpoint_wrapper's state_dict hooks take its prefix out: nothing to fix (fragile)
        (Wrapper.CHECKPOINT, Wrapper.NONE, None),
        (Wrapper.NONE, Wrapper.CHECKPOINT, None),
    ],
)
def test_only_torch_compiles_prefix_reaches_the_keys(
    save_wrapper: Wrapper, load_wrapper: Wrapper, error: ErrorClass | None
) -> None:
    c = replace(
        cell("trap", D, D, W, "wrapper_unfixed_prefix"),
        save_wrapper=save_wrapper,
        load_wrapper=load_wrapper,
    )
    assert expect(c, torch_version=NEW).error is error
