"""Distributed layouts in a worker: one process per rank, joined by PyTorch's env:// rendezvous
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, set by torchrun or by the zygote).

FSDP2 (``fully_shard`` over a 1-D mesh) trains with AdamW and saves model and optimizer state with
``torch.distributed.checkpoint`` (or, by other recipes, a gathered full state dict, or each rank's
own state_dict); a loader at another world size loads it into a fresh model and optimizer. DDP
(a replica per rank) saves on rank 0. Every rank runs the same code; rank 0 gathers the full
state (``full_state_dict``, ``cpu_offload``) and reports its digests, which the verdict compares
like any other cell's. Where the job's subset holds GPUs, each rank takes its own
(``cuda:LOCAL_RANK``) and the ranks join with NCCL; without, they run on the CPU with gloo
(:func:`harness.devices.distributed_backend`, :func:`harness.devices.rank_device`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.format_utils import torch_save_to_dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.axes import Layout, SaveVariant, Wrapper
from harness.devices import distributed_backend, rank_device
from harness.jobspec import (
    LOAD_SEED,
    OPTIMIZER_PREFIX,
    RESUME_AT,
    RESUME_MORE,
    SAVE_SEED,
    TRAIN_STEPS,
    LoadSpec,
    SaveSpec,
    rank_path,
)
from harness.recipes import RECIPES, registrar
from harness.worker.fingerprint import forward_digest, nested_tensors, tensor_record
from harness.worker.main import (
    artifact_sha256,
    describe,
    raised,
    save_atomic,
    verify_checksum,
)
from harness.worker.models import (
    backward,
    build,
    call,
    example_input,
    has_example_input,
    noised,
    on_device,
    perturb,
    unwrap,
    wrap,
)
from harness.worker.probe import isolation_probe
from harness.worker.training import DATA_SEED, TOTAL_STEPS, Regime, make_regime, train_steps

LR = 0.01
# Where a training state keeps every rank's generator states (``rng.ranks.rank0.cpu``, ...).
RNG_KEY = "rng.ranks"
T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def device() -> torch.device:
    """This rank's device: its own GPU of the job's subset (``LOCAL_RANK``), or the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(rank_device(local, torch.cuda.device_count()))


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the job's ranks for the duration of the job: NCCL with one GPU per rank where the
    job sees GPUs, gloo on the CPU otherwise."""
    here = device()
    if here.type == "cuda":
        torch.cuda.set_device(here)
        dist.init_process_group(distributed_backend(torch.cuda.device_count()), device_id=here)
    else:
        dist.init_process_group(distributed_backend(0))
    try:
        yield
    finally:
        dist.destroy_process_group()


Alteration = Callable[[nn.Module], None]


def built(name: str, seed: int, alter: Alteration | None) -> nn.Module:
    """The model from ``seed`` on this rank's device, changed by ``alter`` first where a recipe's
    model changed since the save; a saver's model that gives no example input is perturbed here,
    where the others are trained after wrapping."""
    model = build(name, seed=seed)
    if alter is not None:
        alter(model)
    if seed == SAVE_SEED and not has_example_input(name):
        perturb(model)
    return model.to(device())


def sharded(
    name: str, seed: int, alter: Alteration | None = None, wrapper: Wrapper = Wrapper.NONE
) -> nn.Module:
    """The model from ``seed`` (changed by ``alter`` first, where a recipe's model changed since
    the save), fully sharded over all ranks. A wrapper goes where trainers put it:
    checkpoint_wrapper before sharding, torch.compile of the sharded model."""
    model = built(name, seed, alter)
    if wrapper is Wrapper.CHECKPOINT:
        model = wrap(model, Layout.SINGLE, wrapper)
    mesh = init_device_mesh(device().type, (dist.get_world_size(),))
    fully_shard(model, mesh=mesh)
    if wrapper is Wrapper.COMPILE:
        model = wrap(model, Layout.SINGLE, wrapper)
    return model


def replicated(
    name: str, seed: int, alter: Alteration | None = None, wrapper: Wrapper = Wrapper.NONE
) -> nn.Module:
    """The model from ``seed`` in DistributedDataParallel (a replica per rank), ``wrapper``
    inside it (``DDP(torch.compile(model))``: keys read ``module._orig_mod.``)."""
    model = built(name, seed, alter)
    here = device()
    ids = [here] if here.type == "cuda" else None
    inner = wrap(model, Layout.SINGLE, wrapper)
    return nn.parallel.DistributedDataParallel(inner, device_ids=ids)


def distributed_model(
    layout: str,
    name: str,
    seed: int,
    alter: Alteration | None = None,
    wrapper: str = "none",
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model in ``layout`` at the job's world size, ``wrapper`` applied, and its AdamW."""
    if Layout(layout) is Layout.DDP:
        model = replicated(name, seed, alter, Wrapper(wrapper))
    else:
        model = sharded(name, seed, alter, Wrapper(wrapper))
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, name: str) -> None:
    """A few AdamW steps on the same batches on every rank (FSDP2 averages the gradients); a
    user's model that gives no example input is perturbed before it is sharded instead."""
    if not has_example_input(name):
        return
    model.train()
    generator = torch.Generator().manual_seed(99)
    batch = example_input(name)
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        noisy = on_device(noised(batch, generator), device())
        backward(model, noisy, name)
        optimizer.step()
    model.eval()


def invariant_steps(
    model: nn.Module, regime: Regime, data: torch.Generator, name: str, steps: int
) -> None:
    """Training steps whose arithmetic does not depend on the world size, so that a run resumed
    at M ranks can be compared bitwise with one at N: every rank draws the same batch, only rank
    0's loss counts (the others' is multiplied by 0), and the gradients are summed, not averaged
    (:func:`summed_gradients`). Averaging identical gradients over 3 ranks rounds differently
    from 1, 2 or 4: that would say nothing about the checkpoint."""
    train_steps(model, regime, data, name, steps, loss_weight=1.0 if rank() == 0 else 0.0)


def summed_gradients(model: nn.Module) -> None:
    """FSDP2 reduces gradients by a plain sum (gloo has no pre-multiplied sum)."""
    if not isinstance(model, FSDPModule):
        raise TypeError(f"summed gradients need an FSDP2 model, not {type(model).__name__}")
    model.set_force_sum_reduction_for_comms(True)
    model.set_gradient_divide_factor(1.0)


def from_every_rank(own: T) -> list[T]:
    """Each rank's ``own``, in rank order (a collective: every rank calls it)."""
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, own)
    return everyone


def gathered(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every rank's own report entries, merged."""
    return {name: entry for part in from_every_rank(entries) for name, entry in part.items()}


def rank_probes() -> list[dict[str, Any]]:
    """Every rank's isolation probe with its rank and world size, in rank order (taken first
    thing, before anything that can fail on one rank alone)."""
    return from_every_rank(
        isolation_probe() | {"rank": rank(), "world_size": dist.get_world_size()}
    )


# Per-rank state (a data loader's position, as trainers keep it), one key per rank.
RANK_KEY = "dataloader.dp_rank_{}"


def rank_state(fresh: bool) -> dict[str, torch.Tensor]:
    """This rank's own entry: the saver's (distinct per rank), or the loader's placeholder. On the
    CPU, where a data loader keeps it (so its cells run on the CPU: on GPUs the verdict would
    expect it on rank 0's GPU)."""
    value = torch.zeros(4, dtype=torch.int64)
    if not fresh:
        value += torch.arange(4) + 1000 * (rank() + 1)
    return {RANK_KEY.format(rank()): value}


def full_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, dict[str, Any]]:
    """The gathered full state of model (and optimizer) as a report's ``tensors``: a collective,
    every rank calls it; only rank 0's answer is complete."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state: Any
    optim_state: Any = {}
    if optimizer is None:
        model_state = get_model_state_dict(model, options=options)
    else:
        model_state, optim_state = get_state_dict(model, optimizer, options=options)
    where = str(next(model.parameters()).device)  # where the shards live, not the copy
    return {
        prefix + path: tensor_record(tensor, where)
        for prefix, state in (("", model_state), (OPTIMIZER_PREFIX, optim_state))
        for path, tensor in nested_tensors(state)
    }


def output_digest(model: nn.Module, name: str) -> str | None:
    """An eval-mode forward pass on every rank (FSDP2 gathers the parameters for it); none for a
    user's model that gives no example input."""
    model.eval()
    if not has_example_input(name):
        return None
    with torch.no_grad():
        return forward_digest(call(model, example_input(name, device())), name)[0]


def save_dcp(state: dict[str, Any], final: Path) -> None:
    """dcp.save from every rank into a folder beside ``final``, renamed by rank 0 once every
    shard is written: the checkpoint appears whole or not at all."""
    partial = final.with_name(final.name + ".partial")
    if rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    dcp_save(state, checkpoint_id=str(partial))
    dist.barrier()
    if rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    dist.barrier()


def model_and_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def train_state(
    model: nn.Module, regime: Regime, data: torch.Generator, step: int
) -> dict[str, Any]:
    """What a trainer saves to resume: model, optimizer, scheduler, step and the data order
    (the random-number generators' states are added by the saver: :func:`every_ranks_rng`)."""
    return {
        **model_and_optimizer(model, regime[0]),
        "lr_scheduler": regime[1].state_dict(),
        "step": step,
        "rng": {"data": data.get_state()},
    }


def own_rng() -> dict[str, torch.Tensor]:
    """This rank's random-number generators: the CPU's, and its GPU's where it has one (dropout
    draws from the generator of the device it runs on)."""
    states = {"cpu": torch.get_rng_state()}
    if device().type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device())
    return states


def every_ranks_rng() -> dict[str, dict[str, torch.Tensor]]:
    """Every rank's generator states, gathered to every rank (``rank0.cpu``, ``rank1.cuda``,
    ...): the same entries on every rank, so DCP writes each once, and a loader at any world
    size can read any rank's."""
    return {f"rank{index}": states for index, states in enumerate(from_every_rank(own_rng()))}


def saved_rng(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Templates for the generator states a checkpoint holds, from its metadata (the loader
    does not know the saver's world size). The directory's checksum was verified before this
    reads its pickled ``.metadata``."""
    metadata = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = f"{RNG_KEY}."
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, entry in metadata.items():
        if key.startswith(prefix) and isinstance(entry, TensorStorageMetadata):
            owner, _, kind = key.removeprefix(prefix).partition(".")
            found.setdefault(owner, {})[kind] = torch.empty(
                tuple(entry.size), dtype=entry.properties.dtype
            )
    return found


def restore_rng(states: dict[str, dict[str, torch.Tensor]]) -> str:
    """Give this rank the generator states it resumes with: saved rank ``r mod N`` for rank
    ``r`` of M. Rank 0 always continues rank 0's stream (in the world-size-invariant training
    only rank 0's loss counts, so its stream decides the result); a rank that existed at the
    save continues its own; a rank beyond the saved world size takes a saved rank's stream (two
    ranks then draw the same numbers, as after any restart that reuses one seed per rank).
    Returns the saved rank it took."""
    if not states:
        raise RuntimeError(f"the checkpoint holds no generator states under {RNG_KEY!r}")
    source = f"rank{rank() % len(states)}"
    own = states[source]
    torch.set_rng_state(own["cpu"])
    if "cuda" in own and device().type == "cuda":
        torch.cuda.set_rng_state(own["cuda"], device())
    return source


def run_save(spec: SaveSpec) -> dict[str, Any]:
    started = time.perf_counter()
    final = Path(spec.artifact_path)
    variant = SaveVariant(spec.variant)
    extra: dict[str, dict[str, Any]] = {}
    with process_group():
        probes = rank_probes()
        if variant is SaveVariant.DCP_TRAIN_STATE:
            model = sharded(spec.model, SAVE_SEED)
            summed_gradients(model)  # see invariant_steps
            regime = make_regime(spec.training, model)
            data = torch.Generator().manual_seed(DATA_SEED)
            invariant_steps(model, regime, data, spec.model, RESUME_AT)
            state = train_state(model, regime, data, RESUME_AT)
            state["rng"]["ranks"] = every_ranks_rng()
            save_dcp(state, final)
            # what a resume must reach: this same run, never stopped
            invariant_steps(model, regime, data, spec.model, RESUME_MORE)
            optimizer = regime[0]
        else:
            model, optimizer = distributed_model(
                spec.layout, spec.model, SAVE_SEED, wrapper=spec.wrapper
            )
            train(model, optimizer, spec.model)
            extra = save_distributed(spec, variant, model, optimizer, final)
        tensors = full_tensors(model, optimizer) | extra
        output = output_digest(model, spec.model)
        dist.barrier()
    report: dict[str, Any] = {
        "status": "saved",
        "rank": rank(),
        "probe": isolation_probe(),
        "rank_probes": probes,
    }
    if rank() == 0:
        files = list(final.rglob("*")) if final.is_dir() else [final]
        report.update(
            sha256=artifact_sha256(final),
            bytes=sum(p.stat().st_size for p in files if p.is_file()),
            tensors=tensors,
            output_digest=output,
            output_device=str(device()),
            tagged_as=None,
            serialization="dcp" if final.is_dir() else "zip",
            world=int(os.environ.get("WORLD_SIZE", "1")),
            torch=torch.__version__,
        )
    report["work_s"] = time.perf_counter() - started
    return report


def save_distributed(
    spec: SaveSpec,
    variant: SaveVariant,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    final: Path,
) -> dict[str, dict[str, Any]]:
    """Save by ``variant``; returns the report entries saved beside model and optimizer."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        unwrapped = (SaveVariant.MODULE_STATE_DICT, SaveVariant.FULL_STATE_DICT)
        if variant is not SaveVariant.STATE_DICT and variant not in unwrapped:
            raise ValueError(f"{spec.cell_key}: DDP does not save {variant}")
        if rank() == 0:  # every rank holds the whole model: rank 0 saves, as trainers do
            inner: nn.Module = model
            if variant is SaveVariant.MODULE_STATE_DICT:
                inner = model.module  # a wrapper inside stays: its prefix is in the keys
            elif variant is SaveVariant.FULL_STATE_DICT:
                inner = unwrap(model)
            save_atomic(inner.state_dict(), final)
    elif variant is SaveVariant.FULL_STATE_DICT:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)  # a collective: every rank
        if rank() == 0:
            save_atomic(state, final)
    elif variant is SaveVariant.SHARDED_STATE_DICT:  # the mistake under test: each rank
        save_atomic(model.state_dict(), rank_path(final, rank()))
    elif variant is SaveVariant.DCP_RANK_STATE:
        own = rank_state(fresh=False)
        save_dcp(model_and_optimizer(model, optimizer) | own, final)
        return gathered({key: tensor_record(value, "cpu") for key, value in own.items()})
    elif variant is SaveVariant.DCP:
        save_dcp(model_and_optimizer(model, optimizer), final)
    else:
        raise ValueError(f"{spec.cell_key}: a distributed layout does not save {variant}")
    return {}


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
# at the loader's world size, filed where it is written (harness.worker.recipes.PERFORM holds the
# recipes of one process).
PERFORM: dict[str, Callable[[DistributedLoad], None]] = {}
performs = registrar(PERFORM, "harness.worker.distributed")


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


@performs("dcp_reshard", "dcp_extra_key", "dcp_missing_key")
def _dcp_reshard(ctx: DistributedLoad) -> None:
    _reshard(ctx)


def _reshard(ctx: DistributedLoad, planner: DefaultLoadPlanner | None = None) -> None:
    state = model_and_optimizer(ctx.model, ctx.optimizer)
    # dcp.load fills the sharded tensors of both dicts in place
    dcp_load(state, checkpoint_id=str(ctx.path), planner=planner)
    set_state_dict(
        ctx.model,
        ctx.optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )


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
    state = model_and_optimizer(ctx.model, ctx.optimizer) | own
    dcp_load(state, checkpoint_id=str(ctx.path))
    set_state_dict(
        ctx.model,
        ctx.optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )
    ctx.extra = gathered({key: tensor_record(state[key], "cpu") for key in own})


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
    """The training state into a fresh FSDP2 model at M ranks, then the remaining steps. The
    correct recipe restores the random-number generators too (:func:`restore_rng`); the
    known-bad one leaves them as the fresh process has them."""
    model = ctx.model
    summed_gradients(model)  # see invariant_steps
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
    invariant_steps(model, regime, data, ctx.spec.model, TOTAL_STEPS - int(state["step"]))
    ctx.optimizer = regime[0]


# Recipes whose loading model changed since the save: applied before it is wrapped or sharded.
ALTER: dict[str, Alteration] = {
    "dcp_extra_key": _add_buffer,
    "dcp_partial_load": _add_buffer,
    "dcp_missing_key": _drop_a_parameter,
}


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
            spec.layout, spec.model, LOAD_SEED, ALTER.get(spec.recipe), spec.wrapper
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
            output = output_digest(model, spec.model)
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
