"""The catalogue of load recipes: the ways people fix the ``module.`` prefix, right and wrong.

Each recipe is data: what the saver writes, which layout pairs it applies to, and whether it is a
correct recipe or a known-bad one. The code that performs a recipe lives in
:mod:`harness.worker.one_process_recipes` (one process) and
:mod:`harness.worker.distributed_recipes` (ranks); what the recipe is expected to do lives in
:mod:`harness.core.oracle`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from harness.core.axes import MESHES, Format, Layout, SaveVariant, Wrapper
from harness.core.errors import ConfigError


class RecipeKind(StrEnum):
    CORRECT = "correct"
    KNOWN_BAD = "known_bad"


class Pairing(StrEnum):
    ANY = "any"
    SAME = "same"  # load layout equals save layout
    CROSS = "cross"  # load layout differs from save layout


# The layouts of one process; the recipes of distributed layouts name theirs.
_ALL = frozenset(layout for layout in Layout if not layout.distributed)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    kind: RecipeKind
    save_variant: SaveVariant
    summary: str
    save_layouts: frozenset[Layout] = _ALL
    load_layouts: frozenset[Layout] = _ALL
    pairing: Pairing = Pairing.ANY
    # The recipe ends with the unpickled model itself (its tensors stay where torch.load put
    # them), not with a fresh model that the loaded tensors were copied into.
    keeps_loaded_model: bool = False
    # It restores the optimizer's state too (compared with the saver's, where it reports one).
    restores_optimizer: bool = False
    # The wrappers (torch.compile, checkpoint_wrapper) it applies to, at save and at load; and
    # whether it is about a wrapper on one side that the other side lacks.
    wrappers: frozenset[Wrapper] = frozenset({Wrapper.NONE})
    crosses_wrappers: bool = False
    # It is about a tensor-parallel degree that does not divide the model's layers (its loader's);
    # every other recipe needs one that does (harness.core.matrix.world_skip_reason).
    uneven_split: bool = False

    @property
    def format(self) -> Format:
        return self.save_variant.file_format

    def skip_reason(
        self,
        *,
        save: Layout,
        load: Layout,
        fmt: Format,
        training: str = "",
        wrappers: tuple[Wrapper, Wrapper] = (Wrapper.NONE, Wrapper.NONE),
    ) -> str | None:
        """Why this recipe does not apply to the combination, or None when it does."""
        if fmt is not self.format:
            return f"recipe={self.name} is a {self.format} recipe, not {fmt}"
        if self.save_variant.trains != bool(training):
            return (
                f"recipe={self.name} needs a training regime"
                if self.save_variant.trains
                else f"training={training} applies to training-state recipes only"
            )
        if save not in self.save_layouts:
            return f"recipe={self.name} needs save in {_names(self.save_layouts)}, got {save}"
        if load not in self.load_layouts:
            return f"recipe={self.name} needs load in {_names(self.load_layouts)}, got {load}"
        if self.pairing is Pairing.SAME and save is not load:
            return (
                f"recipe={self.name} loads into the layout it saved from; save={save} load={load}"
            )
        if self.pairing is Pairing.CROSS and save is load:
            return f"recipe={self.name} is about crossing layouts; save=load={save}"
        for role, wrapper in zip(("save", "load"), wrappers, strict=True):
            if wrapper not in self.wrappers:
                return (
                    f"recipe={self.name} applies to {role} wrappers "
                    f"{_names(self.wrappers)}, got {wrapper}"
                )
        if self.crosses_wrappers and wrappers[0] is wrappers[1]:
            return f"recipe={self.name} is about a wrapper on one side only; both are {wrappers[0]}"
        return None


def _names(values: frozenset[Layout] | frozenset[Wrapper]) -> str:
    return "{" + ",".join(sorted(str(value) for value in values)) + "}"


# Training regimes for train_state cells: optimizer + learning-rate scheduler.
TRAININGS: dict[str, str] = {
    "sgd_steplr": "SGD(lr=0.05, momentum=0.9) + StepLR(step_size=2, gamma=0.5)",
    "adam_onecycle": "Adam(lr=0.01) + OneCycleLR(max_lr=0.05, total_steps=6)",
    "sgd_onecycle": "SGD(lr=0.05, momentum=0.9) + OneCycleLR(max_lr=0.05, total_steps=6)",
    "adam_steplr": "Adam(lr=0.01) + StepLR(step_size=2, gamma=0.5)",
    "adamw_onecycle": "AdamW(lr=0.01) + OneCycleLR(max_lr=0.05, total_steps=6)",
}

_DP = frozenset({Layout.DP})
_SINGLE = frozenset({Layout.SINGLE})
_FSDP2 = frozenset({Layout.FSDP2})
# the layouts whose ranks each hold shards (DTensors): FSDP2 and the other device meshes
_SHARDED = frozenset({Layout.FSDP2, *MESHES})
_DDP = frozenset({Layout.DDP})
_TENSOR_PARALLEL = frozenset(layout for layout in Layout if layout.tensor_parallel)
_EVERY = frozenset(Layout)
_ANY_WRAPPER = frozenset(Wrapper)

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        # --- correct recipes -------------------------------------------------------------------
        Recipe(
            name="as_saved",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            pairing=Pairing.SAME,
            summary="model.load_state_dict(torch.load(path)) into the layout it was saved from",
        ),
        Recipe(
            name="as_saved_whole",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.WHOLE,
            pairing=Pairing.SAME,
            keeps_loaded_model=True,
            summary="torch.load(path, weights_only=False) of a whole model this run wrote",
        ),
        Recipe(
            name="module_state_dict",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.MODULE_STATE_DICT,
            save_layouts=_DP,
            summary="save model.module.state_dict(); load into the unwrapped model",
        ),
        Recipe(
            name="wrap_loader",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_DP,
            load_layouts=_SINGLE,
            summary="wrap the fresh model in DataParallel, load_state_dict, then take .module",
        ),
        Recipe(
            name="strip_prefix",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_DP,
            summary="consume_prefix_in_state_dict_if_present(sd, 'module.') on a DataParallel "
            "checkpoint; load into the unwrapped model",
        ),
        Recipe(
            name="resume",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.TRAIN_STATE,
            summary="save model/optimizer/scheduler state, epoch, args (a dict) and RNG states; "
            "load with weights_only=True into any layout and train on: bitwise equal to never "
            "stopping",
        ),
        Recipe(
            name="resume_safe_globals",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.TRAIN_STATE_NAMESPACE,
            pairing=Pairing.SAME,
            summary="args saved as argparse.Namespace, loaded inside "
            "torch.serialization.safe_globals([argparse.Namespace])",
        ),
        Recipe(
            name="whole_module",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.WHOLE,
            save_layouts=_DP,
            load_layouts=_SINGLE,
            keeps_loaded_model=True,
            summary="torch.load a whole DataParallel model (weights_only=False), take .module",
        ),
        Recipe(
            name="dcp_reshard",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            wrappers=_ANY_WRAPPER,
            summary="FSDP2 at N ranks: dcp.save(get_state_dict(model, optimizer)); at M ranks: "
            "dcp.load into get_state_dict of a fresh model and optimizer, then set_state_dict",
        ),
        Recipe(
            name="dcp_async_reshard",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP_ASYNC,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="dcp.async_save(get_state_dict(model, optimizer)) with the thread executor "
            "on a process group of its own, the checkpoint made visible only once the future "
            "completes, and byte for byte what dcp.save writes; loaded as dcp_reshard",
        ),
        Recipe(
            name="dcp_async_process_reshard",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP_ASYNC_PROCESS,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="dcp_async_reshard with the process executor (async_checkpointer_type="
            "PROCESS: a background process per rank that writes the staged state)",
        ),
        Recipe(
            name="dcp_async_interrupted",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP_ASYNC_INTERRUPTED,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="a run folder: step 1 saved and marked latest; step 2's dcp.async_save "
            "interrupted after its shards, before its metadata (the disk as a crash then leaves "
            "it), the marker written only once the future completes: the loader follows the "
            "marker to step 1 and loads it as dcp_reshard",
        ),
        Recipe(
            name="ddp_module_state_dict",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.MODULE_STATE_DICT,
            save_layouts=_DDP,
            load_layouts=_EVERY,
            summary="DDP at N ranks: torch.save(model.module.state_dict()) on rank 0; "
            "load_state_dict(torch.load(...)) into a plain model, DataParallel's or DDP's "
            ".module; into FSDP2 at M ranks, set_model_state_dict(full_state_dict=True, "
            "broadcast_from_rank0=True) with rank 0 reading the file",
        ),
        Recipe(
            name="ddp_strip_prefix",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_DDP,
            load_layouts=_EVERY,
            summary="DDP at N ranks: torch.save(model.state_dict()) ('module.' keys) on rank 0; "
            "consume_prefix_in_state_dict_if_present(sd, 'module.'), then as "
            "ddp_module_state_dict",
        ),
        Recipe(
            name="dcp_no_dist",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=_SINGLE,
            summary="a DCP checkpoint of FSDP2 at N ranks into a plain model in one process: "
            "dcp.load({'model': model.state_dict()}, no_dist=True), then load_state_dict",
        ),
        Recipe(
            name="dcp_meta_to_empty",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=_SINGLE,
            summary="a model built on the meta device (no memory, no initialization, as large "
            "models are built), to_empty(device) to give its tensors storage, then as "
            "dcp_no_dist",
        ),
        Recipe(
            name="dcp_to_torch_save",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=_SINGLE,
            summary="a DCP checkpoint of FSDP2 at N ranks converted with format_utils."
            "dcp_to_torch_save, then torch.load(weights_only=True)['model'] into a plain model",
        ),
        Recipe(
            name="full_state_dict",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.FULL_STATE_DICT,
            save_layouts=_EVERY,
            load_layouts=_EVERY,
            wrappers=_ANY_WRAPPER,
            summary="the complete, unprefixed state, from any layout: a plain model's "
            "state_dict(), .module's of DataParallel or DDP (rank 0), FSDP2's "
            "get_model_state_dict(full_state_dict=True, cpu_offload=True) on rank 0; torch.save. "
            "load_state_dict(torch.load(weights_only)) into a plain model or .module; into FSDP2 "
            "at M ranks, set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True). "
            "Under torch.compile: model._orig_mod.state_dict(), into ._orig_mod",
        ),
        Recipe(
            name="torch_save_to_dcp",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_SINGLE,
            load_layouts=_SHARDED,
            summary="a plain model's torch.save file converted by format_utils.torch_save_to_dcp "
            "(rank 0), then dcp.load into get_model_state_dict of FSDP2 at M ranks and "
            "set_model_state_dict",
        ),
        Recipe(
            name="dcp_partial_load",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP,
            save_layouts=_FSDP2,
            load_layouts=_FSDP2,
            restores_optimizer=True,
            summary="the loading model gained a buffer since the save: dcp.load with "
            "DefaultLoadPlanner(allow_partial_load=True) loads every saved key and leaves the "
            "new one as built",
        ),
        Recipe(
            name="dcp_rank_state_all",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP_RANK_STATE_ALL,
            save_layouts=_FSDP2,
            load_layouts=_FSDP2,
            restores_optimizer=True,
            summary="every rank's data-loader state gathered to every rank and saved under "
            "each saving rank's name (DCP writes each once); at M ranks every rank reads all N "
            "entries, named from the checkpoint's metadata: none is dropped when ranks go away",
        ),
        Recipe(
            name="dcp_resume",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.DCP_TRAIN_STATE,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="FSDP2 (or another mesh) at N ranks: dcp.save of model, optimizer, scheduler,"
            " step, the data order and every rank's random-number generators; at M ranks (on a "
            "mesh of the same tensor-parallel degree) dcp.load, set_state_dict, the scheduler's "
            "load_state_dict, rank r restores saved rank r mod N's generators, and train on: "
            "bitwise equal to the run at N that never stopped",
        ),
        Recipe(
            name="safetensors_model",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.SAFETENSORS_MODEL,
            summary="safetensors.torch.save_model(model) of the unwrapped model (ties "
            "deduplicated); load_model(fresh model, path, device=...) into the unwrapped model",
        ),
        Recipe(
            name="safetensors_index",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.SAFETENSORS_SHARDED,
            save_layouts=_SINGLE,
            load_layouts=_SINGLE,
            summary="the save_pretrained layout written with the safetensors library (shards of "
            "a third of the model each, model.safetensors.index.json, a tied tensor once): "
            "every shard the index names, each holding exactly the keys it maps there "
            "(safe_open), load_state_dict(strict=False), every key the checkpoint lacks tied to "
            "one it holds",
        ),
        Recipe(
            name="safetensors_dcp_hf",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.SAFETENSORS_DCP_HF,
            save_layouts=_FSDP2,
            load_layouts=_SINGLE,
            summary="FSDP2 at N ranks: dcp.save(get_model_state_dict(model), storage_writer="
            "HuggingFaceStorageWriter(save_distributed=True, enable_consolidation=True), two "
            "files) into a folder whose path holds no glob metacharacter; into one plain model "
            "as safetensors_index",
        ),
        Recipe(
            name="safetensors_strip_prefix",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.SAFETENSORS_FILE,
            save_layouts=_DP,
            summary="save_file(model.state_dict()) of DataParallel; load_file(path, device=...), "
            "consume_prefix_in_state_dict_if_present(sd, 'module.'), into the unwrapped model",
        ),
        Recipe(
            name="strip_orig_mod",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_SINGLE,
            wrappers=_ANY_WRAPPER,
            summary="consume_prefix_in_state_dict_if_present(sd, '_orig_mod.') on a compiled "
            "model's state_dict; load into the unwrapped model",
        ),
        Recipe(
            name="strip_stacked_prefixes",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=frozenset({Layout.DP, Layout.DDP}),
            wrappers=_ANY_WRAPPER,
            summary="DataParallel(torch.compile(model)) keys read 'module._orig_mod.' (DDP's, "
            "saved on rank 0, too): consume 'module.', then '_orig_mod.', as they were stacked; "
            "into the unwrapped model",
        ),
        Recipe(
            name="dcp_model_state_dict",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.HELPER_STATE_DICT,
            save_layouts=_SINGLE,
            load_layouts=_SINGLE,
            wrappers=_ANY_WRAPPER,
            summary="torch.distributed.checkpoint.state_dict's get_model_state_dict(model) (which "
            "takes '_orig_mod.' out) and torch.save; set_model_state_dict(fresh model, sd)",
        ),
        # --- known-bad recipes -----------------------------------------------------------------
        Recipe(
            name="wrapper_unfixed_prefix",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            pairing=Pairing.SAME,
            wrappers=_ANY_WRAPPER,
            crosses_wrappers=True,
            summary="a wrapped model's state_dict into a model wrapped otherwise (or not at all), "
            "as is",
        ),
        Recipe(
            name="safetensors_file",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.SAFETENSORS_FILE,
            pairing=Pairing.SAME,
            summary="save_file(model.state_dict()); load_file(path, device=...) and "
            "load_state_dict: save_file refuses tensors that share memory (tied weights)",
        ),
        Recipe(
            name="safetensors_unfixed_prefix",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.SAFETENSORS_FILE,
            pairing=Pairing.CROSS,
            summary="save_file(model.state_dict()) loaded across layouts without fixing the prefix",
        ),
        Recipe(
            name="unfixed_prefix",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            pairing=Pairing.CROSS,
            summary="load_state_dict across layouts without fixing the prefix",
        ),
        Recipe(
            name="strip_prefix_unwrapped",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_SINGLE,
            summary="consume_prefix_in_state_dict_if_present on an unwrapped checkpoint: "
            "'if present' also eats the model's own top-level 'module' attribute",
        ),
        Recipe(
            name="save_method",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.BOUND_METHOD,
            pairing=Pairing.SAME,
            summary="torch.save(model.state_dict) without calling it; "
            "model.load_state_dict(torch.load(path))",
        ),
        Recipe(
            name="assign_dict",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            pairing=Pairing.SAME,
            summary="model.state_dict = torch.load(path): assignment loads nothing, raises nothing",
        ),
        Recipe(
            name="assign_method",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.WHOLE,
            pairing=Pairing.SAME,
            summary="model.state_dict = whole_model.state_dict: state_dict() then reports the "
            "loaded weights while the parameters stay as they were",
        ),
        Recipe(
            name="slice_prefix",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            summary="{k[7:]: v for k, v in sd.items()}; load into the unwrapped model",
        ),
        Recipe(
            name="replace_prefix",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            summary="{k.replace('module.', ''): v ...}; load into the unwrapped model",
        ),
        Recipe(
            name="ddp_unfixed_prefix",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.STATE_DICT,
            save_layouts=_DDP,
            load_layouts=_SINGLE,
            summary="DDP's own state_dict ('module.' keys) into a plain model with no fix",
        ),
        Recipe(
            name="sharded_state_dict",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.SHARDED_STATE_DICT,
            save_layouts=_FSDP2,
            load_layouts=_SINGLE,
            summary="torch.save(model.state_dict()) of an FSDP2 model on each rank (DTensor "
            "shards); a plain model loads rank 0's file, importing torch.distributed.tensor as "
            "the first error asks",
        ),
        Recipe(
            name="dcp_extra_key",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP,
            save_layouts=_FSDP2,
            load_layouts=_FSDP2,
            restores_optimizer=True,
            summary="the loading model gained a buffer since the save: dcp.load with the default "
            "planner (CheckpointException, a BaseException, for the key the checkpoint lacks)",
        ),
        Recipe(
            name="dcp_missing_key",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP,
            save_layouts=_FSDP2,
            load_layouts=_FSDP2,
            restores_optimizer=True,
            summary="the loading model lost a parameter since the save (the last untied one it "
            "registers): dcp.load reads only the keys the model asks for and says nothing",
        ),
        Recipe(
            name="dcp_dtype_template",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="the loading model is in bfloat16 where float32 was saved (a template of "
            "another dtype): dcp.load casts every tensor into the template's dtype and says "
            "nothing",
        ),
        Recipe(
            name="dcp_other_plan",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP,
            save_layouts=_TENSOR_PARALLEL,
            load_layouts=_TENSOR_PARALLEL,
            restores_optimizer=True,
            summary="a tensor-parallel checkpoint loaded as dcp_reshard into a model "
            "parallelized with another plan (colwise where rowwise was saved, and back)",
        ),
        Recipe(
            name="dcp_uneven_split",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=frozenset({Layout.TP}),
            restores_optimizer=True,
            uneven_split=True,
            summary="loaded as dcp_reshard onto a tensor-parallel degree that does not divide "
            "the model's attention heads (the block's 4 over 3 ranks)",
        ),
        Recipe(
            name="local_shards_stitched",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.LOCAL_SHARDS,
            save_layouts=_SHARDED,
            load_layouts=_SINGLE,
            summary="each rank torch.saves its own pieces of model.state_dict() (a DTensor's "
            "to_local()); one process stitches each tensor from the rank files in rank order, "
            "cutting the full shape into a grid by the pieces' size (weights_only=True)",
        ),
        Recipe(
            name="dcp_async_early_marker",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP_ASYNC_EARLY_MARKER,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="dcp_async_interrupted with the latest marker written as soon as "
            "dcp.async_save returns, before its future completes: the marker names step 2, "
            "whose save never finished",
        ),
        Recipe(
            name="safetensors_index_strict",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.SAFETENSORS_SHARDED,
            save_layouts=_SINGLE,
            load_layouts=_SINGLE,
            summary="safetensors_index with load_state_dict(strict=True): a tied tensor the "
            "shards hold once is a missing key",
        ),
        Recipe(
            name="safetensors_shards_lenient",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.SAFETENSORS_LOST_SHARD,
            save_layouts=_SINGLE,
            load_layouts=_SINGLE,
            summary="every *.safetensors file in the folder, the index unread, "
            "load_state_dict(strict=False), of a folder whose last shard was lost (an upload "
            "that stopped early)",
        ),
        Recipe(
            name="safetensors_dcp_hf_in_place",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.SAFETENSORS_DCP_HF_IN_PLACE,
            save_layouts=_FSDP2,
            load_layouts=_SINGLE,
            summary="safetensors_dcp_hf consolidated in the cell's own folder, whose name holds "
            "'[cpu]': the consolidation finds its shards with an unescaped glob",
        ),
        Recipe(
            name="dcp_meta_template",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP,
            save_layouts=_SHARDED,
            load_layouts=_SINGLE,
            summary="a model built on the meta device handed to dcp.load(no_dist=True) as its "
            "own template, for DCP to give its tensors storage",
        ),
        Recipe(
            name="dcp_async_load_in_flight",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP_ASYNC_INTERRUPTED,
            save_layouts=_SHARDED,
            load_layouts=_SHARDED,
            restores_optimizer=True,
            summary="dcp.load of step 2 issued while its dcp.async_save is in flight (after its "
            "shards, before its metadata), without waiting for the future",
        ),
        Recipe(
            name="dcp_rank_state",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP_RANK_STATE,
            save_layouts=_FSDP2,
            load_layouts=_FSDP2,
            restores_optimizer=True,
            summary="each rank saves its own data-loader state under a rank-indexed key beside "
            "the sharded model; at another world size ranks ask for the keys of their own rank",
        ),
        Recipe(
            name="dcp_resume_without_rng",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.DCP_TRAIN_STATE,
            save_layouts=_FSDP2,
            load_layouts=_FSDP2,
            restores_optimizer=True,
            summary="dcp_resume that restores model, optimizer, scheduler, step and data order but"
            " not the random-number generators: a model whose training draws random numbers "
            "(dropout) goes on with other ones",
        ),
        Recipe(
            name="resume_without_rng",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.TRAIN_STATE,
            summary="resume that restores model, optimizer, scheduler and data order but not "
            "torch's random-number generators: a model whose training draws random numbers "
            "(dropout) goes on with other ones",
        ),
        Recipe(
            name="resume_namespace_args",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.TRAIN_STATE_NAMESPACE,
            pairing=Pairing.SAME,
            summary="args saved as argparse.Namespace and loaded with weights_only=True; "
            "the fix is a dict, or safe_globals([argparse.Namespace])",
        ),
        Recipe(
            name="whole_default_load",
            kind=RecipeKind.KNOWN_BAD,
            save_variant=SaveVariant.WHOLE,
            pairing=Pairing.SAME,
            keeps_loaded_model=True,
            summary="the tutorial's literal torch.load(path) of a whole model "
            "(weights_only defaults to True since torch 2.6)",
        ),
        # --- a team's own files ----------------------------------------------------------------
        Recipe(
            name="golden",
            kind=RecipeKind.CORRECT,
            save_variant=SaveVariant.GOLDEN,
            save_layouts=frozenset(),  # no scenario plans it: `ckpt-matrix golden` makes the cells
            load_layouts=_SINGLE,
            summary="a team's own checkpoint (ckpt-matrix golden): loaded by its format's safe "
            "loader in a worker and compared bitwise with what `golden record` saw",
        ),
    )
}
# The recipe of golden cells: performed by harness.worker.golden_load, judged by
# harness.certify.golden against the file's record rather than by an oracle rule.
GOLDEN = "golden"


def recipe(name: str, where: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(RECIPES)
        raise ConfigError(f"{where}: unknown recipe {name!r}; the catalogue has {known}") from None


F = TypeVar("F", bound=Callable[..., object])


def registrar(registry: dict[str, F], owner: str) -> Callable[..., Callable[[F], F]]:
    """A decorator factory that files a function in ``registry`` under the recipe names it is
    given, where the function is defined: ``@performs("as_saved", "unfixed_prefix")``. A name the
    catalogue lacks, or one filed twice, is refused at import."""

    def names(*recipes: str) -> Callable[[F], F]:
        def register(function: F) -> F:
            where = f"{owner}: {getattr(function, '__qualname__', function)}"
            for name in recipes:
                recipe(name, where)
                if name in registry:
                    raise ValueError(f"{where}: recipe {name!r} is registered twice")
                registry[name] = function
            return function

        return register

    return names
