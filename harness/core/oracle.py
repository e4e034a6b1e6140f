"""The oracle: what PyTorch's save/load semantics predict for each cell.

``expect(cell, torch_version=...)`` is a pure function. It is the conformance spec, tested
table-driven on CPU; the worker processes then check PyTorch against it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.core.axes import Format, Layout, SaveVariant, tensor_parallel_ranks
from harness.core.cell import Cell, layout_label
from harness.core.devices import DEFAULT_DEVICE, resolve_device, restore_error, restore_target
from harness.core.errors import UserError
from harness.core.outcomes import ErrorClass
from harness.core.recipes import registrar
from harness.core.zoo import ModelTraits

TorchVersion = tuple[int, int]

# What the saver hands torch.save that pickles the module object itself.
PICKLES_THE_MODULE = frozenset({SaveVariant.WHOLE, SaveVariant.BOUND_METHOD})

# What DCP's Hugging Face writer consolidates from the shards it finds (torch 2.14: torch.finfo
# of every dtype). In place, under a folder named '[cpu]', it finds none and reads no dtype.
CONSOLIDATES_WITH_FINFO = frozenset({SaveVariant.SAFETENSORS_DCP_HF})

# torch.load's weights_only default flipped from False to True in PyTorch 2.6.
WEIGHTS_ONLY_DEFAULT_SINCE: TorchVersion = (2, 6)


def parse_torch_version(text: str) -> TorchVersion:
    """``"2.14.1+cu130"`` -> ``(2, 14)``; a clear error for anything else."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise UserError(
            f"cannot read a torch version from {text!r}; expected e.g. '2.14.1' (is the "
            "interpreter's torch a development build without a version?)"
        )
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """A clean load with every tensor on ``tensor_device``, or a named error class."""

    error: ErrorClass | None
    reason: str
    tensor_device: str

    @property
    def passes(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": "pass" if self.error is None else "error",
            "error_class": None if self.error is None else str(self.error),
            "reason": self.reason,
            "tensor_device": self.tensor_device,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expectation:
        error = data["error_class"]
        return cls(
            error=None if error is None else ErrorClass(error),
            reason=data["reason"],
            tensor_device=data["tensor_device"],
        )


Prediction = tuple[ErrorClass | None, str]


_RULES: dict[str, Callable[[Cell, TorchVersion, ModelTraits], Prediction]] = {}
# The oracle's rule for a recipe is filed where it is written, under the recipe names it judges.
rule = registrar(_RULES, "the oracle")


@rule(
    "as_saved",
    "as_saved_whole",
    "module_state_dict",
    "wrap_loader",
    "strip_prefix",
    "whole_module",
    "safetensors_model",
    "safetensors_strip_prefix",
    "strip_orig_mod",
    "strip_stacked_prefixes",
    "dcp_model_state_dict",
)
def _clean(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, "a correct recipe loads every tensor"


@rule("unfixed_prefix")
def _unfixed_prefix(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    if cell.save_layout is Layout.DP:
        return ErrorClass.KEY_MISMATCH, "keys carry 'module.'; the plain model expects none"
    return ErrorClass.KEY_MISMATCH, "keys lack 'module.'; the DataParallel model expects it"


@rule("strip_prefix_unwrapped")
def _strip_prefix_unwrapped(cell: Cell, _: TorchVersion, traits: ModelTraits) -> Prediction:
    if traits.top_level_module_attr:
        return (
            ErrorClass.KEY_MISMATCH,
            "the model's own top-level 'module' attribute is stripped from its keys",
        )
    return None, "no key starts with 'module.', so nothing is stripped (fragile)"


@rule("save_method")
def _save_method(_: Cell, version: TorchVersion, _traits: ModelTraits) -> Prediction:
    if version >= WEIGHTS_ONLY_DEFAULT_SINCE:
        return ErrorClass.UNSAFE_GLOBAL, "the file pickles a bound method; weights_only refuses it"
    return ErrorClass.NOT_A_STATE_DICT, "torch.load returns the bound method, not a dict"


@rule("assign_dict", "assign_method")
def _assignment(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return (
        ErrorClass.WEIGHTS_DIFFER,
        "assigning to model.state_dict loads nothing; the parameters keep their fresh values",
    )


@rule("slice_prefix")
def _slice_prefix(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    if cell.save_layout is Layout.DP:
        return None, "every key carries 'module.', so k[7:] strips exactly it (fragile)"
    return ErrorClass.KEY_MISMATCH, "k[7:] cuts 7 characters off keys that carry no prefix"


@rule("replace_prefix")
def _replace_prefix(cell: Cell, _: TorchVersion, traits: ModelTraits) -> Prediction:
    if traits.nested_module_dot:
        return ErrorClass.KEY_MISMATCH, "replace() also rewrites names like 'submodule.' inside"
    if traits.top_level_module_attr:
        return ErrorClass.KEY_MISMATCH, "replace() also removes the model's own 'module.' name"
    return None, "no key contains 'module.' below the wrapper, so replace() is exact (fragile)"


@rule("whole_default_load")
def _whole_default_load(_: Cell, version: TorchVersion, _traits: ModelTraits) -> Prediction:
    if version >= WEIGHTS_ONLY_DEFAULT_SINCE:
        return ErrorClass.UNSAFE_GLOBAL, "torch>=2.6 loads with weights_only=True by default"
    return None, "torch<2.6 unpickles whole models by default"


@rule("resume_namespace_args")
def _resume_namespace_args(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    # the load asks for weights_only=True itself: no release's default enters (2.4.1 refuses
    # the Namespace as 2.15.0 does, measured by the release ladder)
    return (
        ErrorClass.UNSAFE_GLOBAL,
        "weights_only refuses argparse.Namespace; save args as a dict, or load inside "
        "safe_globals([argparse.Namespace])",
    )


@rule("resume", "resume_safe_globals")
def _resume(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, "resumed training is bitwise equal to training without a stop"


@rule("dcp_reshard")
def _dcp_reshard(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    if cell.save_layout is cell.load_layout is Layout.FSDP2:
        return None, (
            f"DCP reshards the model and optimizer state saved at {cell.save_world} ranks "
            f"to {cell.load_world}"
        )
    return None, (
        "DCP reshards the model and optimizer state saved on "
        f"{layout_label(cell.save_layout, cell.save_world)} to "
        f"{layout_label(cell.load_layout, cell.load_world)}"
    )


@rule("dcp_async_reshard", "dcp_async_process_reshard")
def _dcp_async_reshard(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    executor = "process" if cell.recipe == "dcp_async_process_reshard" else "thread"
    return None, (
        f"dcp.async_save ({executor} executor) wrote what dcp.save writes, and DCP reshards it "
        "from "
        f"{layout_label(cell.save_layout, cell.save_world)} to "
        f"{layout_label(cell.load_layout, cell.load_world)}"
    )


@rule("dcp_async_interrupted")
def _dcp_async_interrupted(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, (
        "the latest marker moves only once dcp.async_save's future completes: after a crash "
        "while step 2 was in flight it still names step 1, which loads whole"
    )


@rule("dcp_async_early_marker")
def _dcp_async_early_marker(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.INCOMPLETE_CHECKPOINT, (
        "the marker moved to step 2 when its save was issued; the crash came before its "
        "metadata was written, so the checkpoint it names never finished"
    )


@rule("dcp_async_load_in_flight")
def _dcp_async_load_in_flight(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.INCOMPLETE_CHECKPOINT, (
        "a load issued before the future completes finds step 2's shards and no metadata yet"
    )


@rule("safetensors_index", "safetensors_dcp_hf")
def _safetensors_index(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    if cell.recipe == "safetensors_dcp_hf":
        return None, (
            f"DCP's Hugging Face writer consolidates FSDP2's shards at {cell.save_world} ranks "
            "into the save_pretrained layout, which loads by its index"
        )
    return None, "every shard the index names loads, and the ties are restored"


@rule("safetensors_dcp_hf_in_place")
def _safetensors_dcp_hf_in_place(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.CORRUPT_FILE, (
        "DCP's consolidation lists its shards with glob.glob of the folder's path unescaped: "
        "under a folder named '...[cpu]...' it matches none, and writes each consolidated tensor "
        "with an empty dtype and shape, without a word (whatever the dtypes: it reads none); "
        "safetensors refuses the header"
    )


@rule("safetensors_index_strict")
def _safetensors_index_strict(cell: Cell, _: TorchVersion, traits: ModelTraits) -> Prediction:
    if traits.tied:
        return ErrorClass.KEY_MISMATCH, (
            f"{cell.model}'s tied tensor is in the shards once: strict=True misses its other name"
        )
    return None, f"{cell.model} ties no tensors, so strict=True misses none (fragile)"


@rule("safetensors_shards_lenient")
def _safetensors_shards_lenient(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.WEIGHTS_DIFFER, (
        "without the index nothing says a shard is missing; strict=False leaves the lost "
        "shard's tensors as the fresh model built them"
    )


@rule("dcp_meta_template")
def _dcp_meta_template(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.META_TEMPLATE, (
        "dcp.load gives a meta template's tensors storage on the process group's device; "
        "with no_dist there is no process group to ask, and it raises; to_empty first"
    )


@rule("dcp_no_dist", "dcp_to_torch_save", "dcp_meta_to_empty")
def _into_one_process(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    if cell.save_layout is Layout.FSDP2:
        return None, f"the state of FSDP2 at {cell.save_world} ranks loads into one plain model"
    saved = layout_label(cell.save_layout, cell.save_world)
    return None, f"the state of {saved} loads into one plain model"


@rule("full_state_dict", "ddp_module_state_dict", "ddp_strip_prefix")
def _full_state(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    saved = layout_label(cell.save_layout, cell.save_world)
    return (
        None,
        f"the full state of {saved} loads into {layout_label(cell.load_layout, cell.load_world)}",
    )


@rule("torch_save_to_dcp")
def _torch_save_to_dcp(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, f"one process's torch.save file, as DCP, loads at {cell.load_world} ranks"


@rule("dcp_resume")
def _dcp_resume(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    if cell.save_layout is cell.load_layout is Layout.FSDP2:
        return None, (
            f"training resumed at {cell.load_world} ranks is bitwise equal to the run at "
            f"{cell.save_world} that never stopped"
        )
    return None, (
        f"training resumed on {layout_label(cell.load_layout, cell.load_world)} is bitwise "
        f"equal to the run on {layout_label(cell.save_layout, cell.save_world)} that never "
        "stopped (the same tensor-parallel degree: the same arithmetic)"
    )


@rule("resume_without_rng", "dcp_resume_without_rng")
def _resume_without_rng(cell: Cell, _: TorchVersion, traits: ModelTraits) -> Prediction:
    if traits.stochastic:
        return ErrorClass.WEIGHTS_DIFFER, (
            f"{cell.model}'s training draws random numbers (dropout): resumed without the "
            "generators' states it draws other ones, and its weights leave the run that never "
            "stopped"
        )
    return None, (
        f"{cell.model}'s training draws no random numbers, so the generators' states are not "
        "missed (fragile)"
    )


@rule("dcp_partial_load")
def _dcp_partial_load(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, "allow_partial_load loads every saved key and leaves the new buffer as built"


@rule("dcp_extra_key")
def _dcp_extra_key(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.KEY_MISMATCH, (
        "dcp.load raises CheckpointException for a key the model has and the checkpoint lacks; "
        "the fix is DefaultLoadPlanner(allow_partial_load=True)"
    )


@rule("dcp_missing_key")
def _dcp_missing_key(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.TENSOR_SET_DIFFERS, (
        "dcp.load reads only the keys the model asks for: a saved key the model lost is dropped "
        "without a word"
    )


@rule("dcp_dtype_template")
def _dcp_dtype_template(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.DTYPE_CHANGED, (
        "dcp.load copies into the template it is given: a bfloat16 model gets the float32 "
        "checkpoint cast to bfloat16, without a word"
    )


@rule("dcp_other_plan")
def _dcp_other_plan(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    loading = layout_label(cell.load_layout, cell.load_world)
    return ErrorClass.MESH_FORWARD_FAILED, (
        "DCP holds each tensor whole and loads it under any plan; with colwise and rowwise "
        f"swapped, {cell.model}'s forward on {loading} fails: each layer gets its input split "
        "as the other plan splits it"
    )


@rule("dcp_uneven_split")
def _dcp_uneven_split(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    units = cell.model_spec.tensor_parallel_units
    degree = tensor_parallel_ranks(cell.load_layout, cell.load_world)
    return ErrorClass.MESH_FORWARD_FAILED, (
        f"the checkpoint loads, but {degree} tensor-parallel ranks split {cell.model}'s {units} "
        "heads unevenly: a rank's projection holds a part of a head, and the forward fails"
    )


@rule("local_shards_stitched")
def _local_shards_stitched(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    saved = layout_label(cell.save_layout, cell.save_world)
    if cell.save_layout is Layout.FSDP2_TP:
        return ErrorClass.WEIGHTS_DIFFER, (
            f"on {saved} rank order is not the tensors' order: a layer the plan leaves whole is "
            "split by dp alone (ranks 0 and 1 hold the same rows), and a colwise layer is split "
            "by tp, then by dp within each tp piece (a strided shard); stitched in rank order, "
            "rows land in the wrong places without an error"
        )
    return None, (
        f"on {saved} each tensor's pieces lie in rank order along the dimensions they split "
        "(fragile: not on a 2-D mesh [dp, tp])"
    )


@rule("dcp_rank_state_all")
def _dcp_rank_state_all(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, (
        f"every one of the {cell.save_world} saving ranks' states is read back at "
        f"{cell.load_world} ranks: none is dropped, none is missing"
    )


@rule("dcp_rank_state")
def _dcp_rank_state(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    saved, loading = cell.save_world, cell.load_world
    if saved > loading:
        return ErrorClass.TENSOR_SET_DIFFERS, (
            f"the state of ranks {loading}..{saved - 1} has no rank to ask for it at "
            f"{loading} ranks: dropped without a word"
        )
    if saved < loading:
        return ErrorClass.KEY_MISMATCH, (
            f"ranks {saved}..{loading - 1} ask for keys no rank saved: CheckpointException"
        )
    return None, "at the same world size every rank finds its own key (fragile)"


@rule("wrapper_unfixed_prefix")
def _wrapper_unfixed_prefix(cell: Cell, _: TorchVersion, _traits: ModelTraits) -> Prediction:
    saved, loading = cell.save_wrapper.prefix, cell.load_wrapper.prefix
    if saved != loading:
        return ErrorClass.KEY_MISMATCH, (
            f"keys lack {loading!r}; the loading model expects it"
            if not saved
            else f"keys carry {saved!r}; the loading model expects none"
            if not loading
            else f"keys carry {saved!r}; the loading model expects {loading!r}"
        )
    return None, (
        "checkpoint_wrapper's state_dict hooks keep '_checkpoint_wrapped_module.' out of the keys:"
        " nothing to fix (fragile)"
    )


@rule("safetensors_file")
def _safetensors_file(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return None, "no two tensors share memory, so save_file accepts them (fragile)"


@rule("safetensors_unfixed_prefix")
def _safetensors_unfixed_prefix(
    cell: Cell, version: TorchVersion, traits: ModelTraits
) -> Prediction:
    return _unfixed_prefix(cell, version, traits)


@rule("ddp_unfixed_prefix")
def _ddp_unfixed_prefix(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.KEY_MISMATCH, "DDP's keys carry 'module.'; the plain model expects none"


@rule("sharded_state_dict")
def _sharded_state_dict(_: Cell, __: TorchVersion, _traits: ModelTraits) -> Prediction:
    return ErrorClass.SHARDED_TENSOR, (
        "an FSDP2 model's own state_dict() holds DTensor shards, which a plain model cannot copy "
        "(at any world size); gather it with get_model_state_dict(full_state_dict=True)"
    )


def expect(
    cell: Cell, *, torch_version: TorchVersion, traits: ModelTraits | None = None
) -> Expectation:
    """What PyTorch should do, in the order it does it: ``weights_only`` refuses a global before
    any storage is read; every storage is then restored through ``map_location`` (which may raise
    for CUDA); then the recipe does what it does. ``traits``: the model's, as measured in a worker
    (default: the zoo's declared ones; a user's model has none until measured)."""
    try:
        rule = _RULES[cell.recipe]
    except KeyError:
        raise ValueError(f"the oracle has no rule for recipe {cell.recipe!r} ({cell.id})") from None
    if traits is None:
        traits = cell.model_spec.declared
    if traits is None:
        raise ValueError(f"{cell.id}: the traits of {cell.model} are measured in a worker first")
    visible = len(cell.load_visibility)
    target = restore_target(cell.save_device, cell.map_location)
    recipe = cell.recipe_spec
    device = target if recipe.keeps_loaded_model else resolve_device(DEFAULT_DEVICE, visible)
    refused = save_error(cell, traits)
    if refused is not None:
        return Expectation(error=refused[0], reason=refused[1], tensor_device=device)
    error, reason = rule(cell, torch_version, traits)
    if error is ErrorClass.UNSAFE_GLOBAL:
        return Expectation(error=error, reason=reason, tensor_device=device)
    # a safetensors file carries no device: load_file puts every tensor where it is told
    no_restore = cell.format is Format.SAFETENSORS
    restore, restore_reason = (None, "") if no_restore else restore_error(target, visible)
    if restore is not None:
        saved = f"saved on {cell.save_device}, map_location={cell.map_location}: {restore_reason}"
        return Expectation(error=restore, reason=saved, tensor_device=device)
    forward = dp_forward_error(cell)
    if forward is not None:
        return Expectation(error=ErrorClass.DP_DEVICE_MISSING, reason=forward, tensor_device=device)
    return Expectation(error=error, reason=reason, tensor_device=device)


def save_error(cell: Cell, traits: ModelTraits) -> Prediction | None:
    """Where the save itself is refused, before any load: what the model is, against how the
    saver writes it."""
    variant = cell.recipe_spec.save_variant
    if traits.parametrized and variant in PICKLES_THE_MODULE:
        return ErrorClass.NOT_PICKLABLE, (
            "torch.save pickles the module itself, and a parametrized module refuses to be "
            "pickled: only its state_dict() serializes"
        )
    if traits.integer_tensors and variant in CONSOLIDATES_WITH_FINFO:
        return ErrorClass.UNSUPPORTED_DTYPE, (
            "DCP's Hugging Face consolidation sizes each tensor with torch.finfo, which refuses "
            f"an integer dtype: {cell.model} has an integer tensor (as BatchNorm's "
            "num_batches_tracked)"
        )
    if traits.tied and variant is SaveVariant.SAFETENSORS_FILE:
        return ErrorClass.SHARED_TENSORS, (
            "save_file refuses tensors that share memory (tied weights); save_model "
            "deduplicates them"
        )
    return None


def dp_forward_error(cell: Cell) -> str | None:
    """A whole DataParallel model, loaded as it was pickled, keeps its saver's ``device_ids``
    (logical 0..n-1 of the save subset). Its forward scatters the input to every one of them, so
    a loader that sees fewer GPUs fails there, after a clean load: the tutorial's claim that such
    a model errors rather than silently running on fewer GPUs. With as many GPUs or more it runs
    on the first n (the result records ``dp_device_ids``)."""
    if not (
        cell.recipe_spec.keeps_loaded_model
        and cell.load_layout is Layout.DP
        and cell.format is Format.WHOLE
    ):
        return None
    saved, seen = len(cell.save_visibility), len(cell.load_visibility)
    if saved <= seen or seen == 0:
        return None
    return (
        f"the pickled DataParallel keeps device_ids 0..{saved - 1} of its saver; its forward "
        f"scatters to cuda:{saved - 1} and the loader sees {seen} GPU(s)"
    )
