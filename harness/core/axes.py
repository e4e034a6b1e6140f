"""The enumerated axes of the matrix: layouts, formats and what the saver writes."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from harness.core.errors import ConfigError

E = TypeVar("E", bound=StrEnum)


class Layout(StrEnum):
    """How the model is held in the process that saves or loads it."""

    SINGLE = "single"  # a plain module
    DP = "dp"  # wrapped in nn.DataParallel (keys carry the ``module.`` prefix)
    DDP = "ddp"  # DistributedDataParallel, one process per rank (keys carry ``module.``)
    FSDP2 = "fsdp2"  # fully_shard over a 1-D device mesh, one process per rank
    # the model's tensor-parallel plan (parallelize_module: colwise and rowwise) over a 1-D mesh
    TP = "tp"
    FSDP2_TP = "fsdp2_tp"  # a 2-D mesh [dp, tp]: the plan over tp, fully_shard over dp
    HSDP = "hsdp"  # fully_shard over a 2-D mesh [rep, shard]: replicas of a sharded model

    @property
    def distributed(self) -> bool:
        """One process per rank (a world size), rather than one process."""
        return self in (Layout.DDP, Layout.FSDP2, *MESHES)

    @property
    def tensor_parallel(self) -> bool:
        """The model's tensor-parallel plan shards its layers (a model without one has none)."""
        return self in (Layout.TP, Layout.FSDP2_TP)

    def mesh(self, world: int) -> tuple[tuple[str, int], ...]:
        """The device mesh of ``world`` ranks, as (dimension, size) pairs, outermost first:
        ``[dp:2, tp:2]`` for fsdp2_tp at 4 ranks. A 2-D mesh keeps 2 ranks on its inner
        dimension (tensor parallelism within a node, as trainers place it) and needs at least 2
        on its outer one. Raises ValueError for a world size it cannot shape
        (:func:`mesh_skip_reason` says it as a reason)."""
        if self in (Layout.FSDP2_TP, Layout.HSDP):
            if world < 4 or world % 2:
                raise ValueError(
                    f"a 2-D mesh needs an even world size of at least 4 (2 or more ranks on "
                    f"each dimension), not {world}"
                )
            outer, inner = ("dp", "tp") if self is Layout.FSDP2_TP else ("rep", "shard")
            return ((outer, world // 2), (inner, 2))
        if self is Layout.TP:
            return (("tp", world),)
        if self.distributed:
            return (("dp", world),)
        return ()


# The layouts named by their device mesh in cell ids (``fsdp2[dp2,tp2]``), beyond FSDP2's 1-D one.
MESHES = (Layout.TP, Layout.FSDP2_TP, Layout.HSDP)


def mesh_skip_reason(layout: Layout, world: int) -> str | None:
    """Why ``layout`` has no mesh of ``world`` ranks, or None."""
    try:
        layout.mesh(world)
    except ValueError as exc:
        return f"{layout}: {exc}"
    return None


def tensor_parallel_ranks(layout: Layout, world: int) -> int:
    """Over how many ranks the layout splits each layer's product (1: none)."""
    if not layout.tensor_parallel or mesh_skip_reason(layout, world) is not None:
        return 1
    return dict(layout.mesh(world))["tp"]


class Wrapper(StrEnum):
    """What wraps the model inside its layout (``DataParallel(torch.compile(model))``)."""

    NONE = "none"
    COMPILE = "compile"  # torch.compile: an OptimizedModule, keys prefixed with ``_orig_mod.``
    CHECKPOINT = "checkpoint"  # checkpoint_wrapper (activation checkpointing)

    @property
    def prefix(self) -> str:
        """What the wrapper puts before the model's own keys in ``state_dict()``: checkpoint_wrapper
        registers state_dict hooks that take ``_checkpoint_wrapped_module.`` out again."""
        return "_orig_mod." if self is Wrapper.COMPILE else ""


class Format(StrEnum):
    """What kind of file the checkpoint is."""

    WEIGHTS = "weights"  # a state_dict (or what a recipe mistakes for one)
    WHOLE = "whole"  # the pickled model object
    TRAIN_STATE = "train_state"  # {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args', 'rng'}
    DCP = "dcp"  # a torch.distributed.checkpoint directory: sharded model and optimizer state
    SAFETENSORS = "safetensors"  # safetensors.torch: tensors only, loading runs no code
    GOLDEN = "golden"  # a team's own file, any format (``ckpt-matrix golden``), never planned


class SaveVariant(StrEnum):
    """The exact object the saver hands to ``torch.save``."""

    STATE_DICT = "state_dict"  # model.state_dict() of the model as held (wrapper included)
    MODULE_STATE_DICT = "module_state_dict"  # model.module.state_dict() of a DataParallel model
    BOUND_METHOD = "bound_method"  # model.state_dict, the method itself (a known mistake)
    WHOLE = "whole"  # the model object
    TRAIN_STATE = "train_state"  # the training state, args as a plain dict
    TRAIN_STATE_NAMESPACE = "train_state_namespace"  # ... args as an argparse.Namespace
    DCP = "dcp"  # dcp.save of get_state_dict(model, optimizer), from every rank
    # the complete, unprefixed model state: a plain model's state_dict(), .module's of DataParallel
    # or DDP (rank 0), FSDP2's gathered by get_model_state_dict(full_state_dict=True) on rank 0
    FULL_STATE_DICT = "full_state_dict"
    SHARDED_STATE_DICT = "sharded_state_dict"  # each rank's own model.state_dict() (DTensors)
    # each rank's own pieces of model.state_dict(): DTensors' local shards, other tensors whole
    LOCAL_SHARDS = "local_shards"
    DCP_RANK_STATE = "dcp_rank_state"  # DCP, plus each rank's own entry under a rank-indexed key
    # DCP, plus every rank's entry, gathered, under every rank's name: any loader reads them all
    DCP_RANK_STATE_ALL = "dcp_rank_state_all"
    DCP_TRAIN_STATE = "dcp_train_state"  # DCP of model, optimizer, scheduler and step
    SAFETENSORS_FILE = "safetensors_file"  # save_file(model.state_dict()) of the model as held
    SAFETENSORS_MODEL = "safetensors_model"  # save_model(the unwrapped model): ties deduplicated
    # the save_pretrained layout: shards and model.safetensors.index.json, ties kept once; written
    # with the safetensors library, or by DCP's HuggingFaceStorageWriter from FSDP2's ranks
    # (consolidated); or with its last shard lost, as an interrupted upload leaves it
    SAFETENSORS_SHARDED = "safetensors_sharded"
    SAFETENSORS_DCP_HF = "safetensors_dcp_hf"
    # ... consolidated in place, in the cell's own folder, whose name holds "[cpu]"
    SAFETENSORS_DCP_HF_IN_PLACE = "safetensors_dcp_hf_in_place"
    SAFETENSORS_LOST_SHARD = "safetensors_lost_shard"
    HELPER_STATE_DICT = "helper_state_dict"  # get_model_state_dict(model) (strips _orig_mod.)
    # dcp.async_save (its thread executor) of get_state_dict(model, optimizer), awaited before
    # the checkpoint is made visible
    DCP_ASYNC = "dcp_async"
    DCP_ASYNC_PROCESS = "dcp_async_process"  # ... with its process executor
    # a run folder: step 1 saved and marked latest, step 2's dcp.async_save interrupted after its
    # shards, before its metadata; the "latest" marker written once the future completes, or
    # (the known-bad early marker) as soon as the save is issued
    DCP_ASYNC_INTERRUPTED = "dcp_async_interrupted"
    DCP_ASYNC_EARLY_MARKER = "dcp_async_early_marker"
    GOLDEN = "golden"  # nothing: a team wrote the file (``ckpt-matrix golden``)

    @property
    def trains(self) -> bool:
        """A training state: the cell names a training regime to save and resume."""
        return self in (
            SaveVariant.TRAIN_STATE,
            SaveVariant.TRAIN_STATE_NAMESPACE,
            SaveVariant.DCP_TRAIN_STATE,
        )

    @property
    def file_format(self) -> Format:
        if self is SaveVariant.WHOLE:
            return Format.WHOLE
        if self is SaveVariant.GOLDEN:
            return Format.GOLDEN
        if self in (
            SaveVariant.DCP,
            SaveVariant.DCP_RANK_STATE,
            SaveVariant.DCP_RANK_STATE_ALL,
            SaveVariant.DCP_TRAIN_STATE,
            SaveVariant.DCP_ASYNC,
            SaveVariant.DCP_ASYNC_PROCESS,
            SaveVariant.DCP_ASYNC_INTERRUPTED,
            SaveVariant.DCP_ASYNC_EARLY_MARKER,
        ):
            return Format.DCP
        if self in (
            SaveVariant.SAFETENSORS_FILE,
            SaveVariant.SAFETENSORS_MODEL,
            SaveVariant.SAFETENSORS_SHARDED,
            SaveVariant.SAFETENSORS_DCP_HF,
            SaveVariant.SAFETENSORS_DCP_HF_IN_PLACE,
            SaveVariant.SAFETENSORS_LOST_SHARD,
        ):
            return Format.SAFETENSORS
        if self in (SaveVariant.TRAIN_STATE, SaveVariant.TRAIN_STATE_NAMESPACE):
            return Format.TRAIN_STATE
        return Format.WEIGHTS


def parse_enum(kind: type[E], value: str, where: str) -> E:
    """Read one axis value, naming the place and the accepted values on error."""
    try:
        return kind(value)
    except ValueError:
        accepted = ", ".join(repr(member.value) for member in kind)
        raise ConfigError(
            f"{where}: unknown {kind.__name__.lower()} {value!r}; expected one of {accepted}"
        ) from None
