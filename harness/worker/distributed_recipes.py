"""Loading distributed checkpoints in a worker: each recipe of a distributed layout, performed
at the loader's world size into a fresh model and optimizer of that layout (``PERFORM``, filed
where each is written; ``harness.worker.one_process_recipes`` holds the recipes of one process),
and ``run_load``, which runs one on every rank and reports rank 0's tensors. The ranks, the models
and the saves they load are ``harness.worker.distributed``'s.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.format_utils import torch_save_to_dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.core.axes import Layout
from harness.core.cell import layout_label
from harness.core.classify import IncompleteCheckpointError, MeshForwardError
from harness.core.jobspec import (
    LOAD_SEED,
    LoadSpec,
)
from harness.core.recipes import RECIPES, registrar
from harness.inspect.dcp_dir import METADATA
from harness.worker.distributed import (
    ALL_RANKS_KEY,
    LATEST,
    STEPS,
    Alteration,
    T,
    device,
    distributed_model,
    from_every_rank,
    full_tensors,
    gathered,
    invariant_steps,
    model_and_optimizer,
    output_digest,
    process_group,
    rank,
    rank_probes,
    rank_state,
    restore_rng,
    saved_entries,
    saved_rng,
    summed_gradients,
    train_state,
)
from harness.worker.fingerprint import tensor_record
from harness.worker.models import (
    unwrap,
)
from harness.worker.one_process import (
    describe,
    raised,
    verify_checksum,
)
from harness.worker.probe import isolation_probe
from harness.worker.training import TOTAL_STEPS, make_regime


@dataclass(kw_only=True)
class DistributedLoad:
    """What a distributed recipe works on, and what it adds to its report."""

    spec: LoadSpec
    path: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer  # a recipe that builds its own regime replaces it
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # entries beyond model/optim
    unsaved: set[str] = field(default_factory=set)  # the model's keys the checkpoint never had


# How each recipe of a distributed layout loads, into a fresh model and optimizer of that layout
# at the loader's world size, filed where it is written
# (harness.worker.one_process_recipes.PERFORM holds the recipes of one process).
PERFORM: dict[str, Callable[[DistributedLoad], None]] = {}
performs = registrar(PERFORM, "harness.worker.distributed_recipes")


# What a load may raise: CheckpointException (torch.distributed.checkpoint) is a BaseException.
LOAD_ERRORS = (Exception, CheckpointException)


def agree(failure: BaseException | None) -> None:
    """A collective after a step that may fail on some ranks only: every rank learns whether any
    failed, and each raises (its own exception, or one naming the ranks that failed), so that no
    rank goes on into a collective that a rank which gave up will never join."""
    own = None if failure is None else f"{type(failure).__name__}: {describe(failure)}"
    texts = from_every_rank(own)
    if failure is not None:
        raise failure
    failed = [(index, text) for index, text in enumerate(texts) if text is not None]
    if failed:
        raise RuntimeError("; ".join(f"rank {index} failed: {text}" for index, text in failed))


def on_rank0(action: Callable[[], T]) -> T | None:
    """``action()`` on rank 0 alone, its failure raised on every rank (:func:`agree`); the other
    ranks get None."""
    result: T | None = None
    failure: BaseException | None = None
    if rank() == 0:
        try:
            result = action()
        except LOAD_ERRORS as exc:
            failure = exc
    agree(failure)
    return result


def _full_state(ctx: DistributedLoad, *, strip: bool = False) -> None:
    """A full (unsharded) state dict file into DDP (every rank reads it, into ``.module``) or
    FSDP2 (rank 0 reads it; set_model_state_dict broadcasts and shards it)."""

    def read() -> dict[str, Any]:
        # onto this rank's own device: a DDP saver's CUDA storages carry cuda:0
        state: dict[str, Any] = torch.load(ctx.path, map_location=device(), weights_only=True)
        if strip:
            consume_prefix_in_state_dict_if_present(state, "module.")
        return state

    if isinstance(ctx.model, nn.parallel.DistributedDataParallel):
        unwrap(ctx.model).load_state_dict(read())  # under any wrapper: ._orig_mod
        return
    state = on_rank0(read) or {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(ctx.model, state, options=options)


@performs("full_state_dict", "ddp_module_state_dict")
def _into_full_state(ctx: DistributedLoad) -> None:
    _full_state(ctx)


@performs("ddp_strip_prefix")
def _ddp_strip_prefix(ctx: DistributedLoad) -> None:
    _full_state(ctx, strip=True)


@performs(
    "dcp_reshard",
    "dcp_async_reshard",
    "dcp_async_process_reshard",
    "dcp_extra_key",
    "dcp_missing_key",
    "dcp_dtype_template",
    "dcp_other_plan",
    "dcp_uneven_split",
)
def _dcp_reshard(ctx: DistributedLoad) -> None:
    _reshard(ctx)


def _reshard(
    ctx: DistributedLoad,
    planner: DefaultLoadPlanner | None = None,
    beside: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Model and optimizer through dcp.load and set_state_dict, with the entries ``beside``
    them (templates dcp.load fills in place too); returns what was loaded."""
    state = model_and_optimizer(ctx.model, ctx.optimizer) | (beside or {})
    # dcp.load fills the sharded tensors of both dicts in place
    dcp_load(state, checkpoint_id=str(ctx.path), planner=planner)
    set_state_dict(
        ctx.model,
        ctx.optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )
    return state


@performs("dcp_async_interrupted", "dcp_async_early_marker", "dcp_async_load_in_flight")
def _latest(ctx: DistributedLoad) -> None:
    """The step the run folder's marker names (the known-bad load in flight: step 2, whatever
    the marker says), loaded as dcp_reshard. A step whose save never finished has shards and no
    metadata; dcp.load fails on it with a missing file, which is named here for what it means
    (:class:`IncompleteCheckpointError`)."""
    step = (ctx.path / LATEST).read_text().strip()
    named = f"{ctx.path / LATEST} names {step}"
    if ctx.spec.recipe == "dcp_async_load_in_flight":
        step = STEPS[-1]
        named = f"a load of {step} issued before its save's future completed"
    if step not in STEPS:
        raise ValueError(f"{ctx.path / LATEST} names {step!r}, not one of {STEPS}")
    folder = ctx.path / step
    ctx.path = folder
    try:
        _reshard(ctx)
    except LOAD_ERRORS as exc:
        if (folder / METADATA).is_file():
            raise
        raise IncompleteCheckpointError(
            f"{named}, whose save never finished: {folder} holds "
            f"{len(list(folder.glob('*.distcp')))} shard file(s) and no {METADATA}; dcp.load "
            f"raised {type(exc).__name__}: {describe(exc)}"
        ) from exc


ADDED_BUFFER = "added_since_save"
ADDED_VALUE = 7.0


def _add_buffer(model: nn.Module) -> None:
    model.register_buffer(ADDED_BUFFER, torch.full((4,), ADDED_VALUE))


def _drop_a_parameter(model: nn.Module) -> None:
    """The loading model lost a parameter since the save: the last one it registers under one
    name only (a tied weight would live on under its other name) becomes a non-persistent
    buffer holding the same tensor, so the model still runs but neither saves nor loads it.
    Any model has such a parameter; no layer type is assumed."""
    named = list(model.named_parameters(remove_duplicate=False))
    names = Counter(id(parameter) for _, parameter in named)
    untied = [(name, parameter) for name, parameter in named if names[id(parameter)] == 1]
    if not untied:
        raise RuntimeError("every parameter of the model is tied: no parameter to drop")
    name, parameter = untied[-1]
    owner_name, _, attribute = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    delattr(owner, attribute)
    owner.register_buffer(attribute, parameter.detach().clone(), persistent=False)


@performs("dcp_partial_load")
def _dcp_partial_load(ctx: DistributedLoad) -> None:
    _reshard(ctx, DefaultLoadPlanner(allow_partial_load=True))
    added = ctx.model.get_buffer(ADDED_BUFFER)
    if not torch.equal(added.cpu(), torch.full((4,), ADDED_VALUE)):
        raise RuntimeError(f"allow_partial_load changed {ADDED_BUFFER!r}, which no rank saved")
    ctx.unsaved = {ADDED_BUFFER}


@performs("dcp_rank_state")
def _dcp_rank_state(ctx: DistributedLoad) -> None:
    own = rank_state(fresh=True)
    state = _reshard(ctx, beside=own)
    ctx.extra = gathered({key: tensor_record(state[key], "cpu") for key in own})


@performs("dcp_rank_state_all")
def _dcp_rank_state_all(ctx: DistributedLoad) -> None:
    saved = saved_entries(ctx.path, ALL_RANKS_KEY)
    state = _reshard(ctx, beside=saved)
    ctx.extra = {key: tensor_record(state[key], "cpu") for key in saved}


@performs("torch_save_to_dcp")
def _torch_save_to_dcp(ctx: DistributedLoad) -> None:
    converted = Path(ctx.spec.report_path).with_name("converted-dcp")

    def convert() -> None:
        # torch_save_to_dcp unpickles with weights_only=False: the file is this run's own,
        # its checksum verified before this call
        shutil.rmtree(converted, ignore_errors=True)
        torch_save_to_dcp(ctx.path, converted)

    on_rank0(convert)
    state = get_model_state_dict(ctx.model)
    dcp_load(state, checkpoint_id=str(converted))
    set_model_state_dict(ctx.model, state)


@performs("dcp_resume", "dcp_resume_without_rng")
def _dcp_resume(ctx: DistributedLoad) -> None:
    """The training state into a fresh model on the loader's mesh at M ranks, then the remaining
    steps. The correct recipe restores the random-number generators too (:func:`restore_rng`);
    the known-bad one leaves them as the fresh process has them."""
    model = ctx.model
    layout = Layout(ctx.spec.layout)
    summed_gradients(model, layout)  # see invariant_steps
    regime = make_regime(ctx.spec.training, model)
    data = torch.Generator()
    state = train_state(model, regime, data, 0)
    with_rng = ctx.spec.recipe == "dcp_resume"
    if with_rng:
        state["rng"]["ranks"] = saved_rng(ctx.path)
    dcp_load(state, checkpoint_id=str(ctx.path))  # tensors in place, the rest into the dict
    set_state_dict(
        model, regime[0], model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    regime[1].load_state_dict(state["lr_scheduler"])
    data.set_state(state["rng"]["data"])
    if with_rng:
        restore_rng(state["rng"]["ranks"])
    steps = TOTAL_STEPS - int(state["step"])
    invariant_steps(model, regime, data, ctx.spec.model, steps, layout)
    ctx.optimizer = regime[0]


def _in_bfloat16(model: nn.Module) -> None:
    """The loading model in bfloat16 (its floating-point tensors; integer buffers stay), fed
    bfloat16 as such a model is."""

    def cast(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            value.to(torch.bfloat16)
            if isinstance(value, torch.Tensor) and value.is_floating_point()
            else value
            for value in args
        )

    model.to(torch.bfloat16)
    model.register_forward_pre_hook(cast)


# Recipes whose loading model changed since the save: applied before it is wrapped or sharded.
ALTER: dict[str, Alteration] = {
    "dcp_extra_key": _add_buffer,
    "dcp_partial_load": _add_buffer,
    "dcp_missing_key": _drop_a_parameter,
    "dcp_dtype_template": _in_bfloat16,
}
# Recipes whose loading model is parallelized with another plan than the saver's.
OTHER_PLAN = frozenset({"dcp_other_plan"})


def forward_on_mesh(spec: LoadSpec, model: nn.Module) -> str | None:
    """The loaded model's output digest; on a tensor-parallel layout a failing forward is
    reported as failing on its mesh (:class:`MeshForwardError`), with the error it raised."""
    layout = Layout(spec.layout)
    if not layout.tensor_parallel:
        return output_digest(model, spec.model)
    try:
        return output_digest(model, spec.model)
    except Exception as exc:
        where = layout_label(layout, dist.get_world_size())
        raise MeshForwardError(
            f"rank {rank()}: the forward pass on {where} failed: {type(exc).__name__}: "
            f"{describe(exc)}"
        ) from exc


def run_load(spec: LoadSpec) -> dict[str, Any]:
    started = time.perf_counter()
    path = Path(spec.artifact_path)
    report: dict[str, Any] = {
        "rank": rank(),
        "probe": isolation_probe(),
        "torch": torch.__version__,
    }
    with process_group():
        report["rank_probes"] = rank_probes()
        model, optimizer = distributed_model(
            spec.layout,
            spec.model,
            LOAD_SEED,
            ALTER.get(spec.recipe),
            spec.wrapper,
            other_plan=spec.recipe in OTHER_PLAN,
        )
        before = full_tensors(model, None)
        ctx = DistributedLoad(spec=spec, path=path, model=model, optimizer=optimizer)
        try:
            try:
                # DCP reads .metadata with pickle: only a directory this run wrote, verified
                verify_checksum(path, spec.artifact_sha256)
                PERFORM[spec.recipe](ctx)
            except LOAD_ERRORS as exc:
                agree(exc)
            agree(None)
            restored = ctx.optimizer if RECIPES[spec.recipe].restores_optimizer else None
            tensors = full_tensors(model, restored) | ctx.extra
            for key in ctx.unsaved:
                tensors.pop(key, None)
            output = forward_on_mesh(spec, model)
        except LOAD_ERRORS as exc:
            report.update(raised(exc))
        else:
            report.update(
                status="loaded",
                tensors=tensors,
                output_digest=output,
                output_device=str(device()),
            )
        report["before"] = before
    report["work_s"] = time.perf_counter() - started
    return report
