"""Distributed layouts in a worker: one process per rank, joined by PyTorch's env:// rendezvous
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, set by torchrun or by the zygote).

FSDP2 (``fully_shard`` over a 1-D mesh) trains with AdamW and saves model and optimizer state with
``torch.distributed.checkpoint`` (or, by other recipes, a gathered full state dict, or each rank's
own state_dict); a loader at another world size loads it into a fresh model and optimizer. DDP
(a replica per rank) saves on rank 0. Every rank runs the same code; rank 0 gathers the full
state (``full_state_dict``, ``cpu_offload``) and reports its digests, which the verdict compares
like any other cell's. Where the job's subset holds GPUs, each rank takes its own
(``cuda:LOCAL_RANK``) and the ranks join with NCCL; without, they run on the CPU with gloo
(:func:`harness.core.devices.distributed_backend`, :func:`harness.core.devices.rank_device`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
)
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.storage import WriteResult

from harness.core.axes import Layout, SaveVariant, Wrapper, tensor_parallel_ranks
from harness.core.classify import classify_exception
from harness.core.devices import distributed_backend, rank_device
from harness.core.jobspec import (
    OPTIMIZER_PREFIX,
    RESUME_AT,
    RESUME_MORE,
    SAVE_SEED,
    TRAIN_STEPS,
    SaveSpec,
    rank_path,
)
from harness.core.outcomes import ErrorClass
from harness.worker.fingerprint import forward_digest, nested_tensors, tensor_record
from harness.worker.fsdp2_api import DTensor, FSDPModule
from harness.worker.meshes import device_mesh, place
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
from harness.worker.one_process import (
    artifact_sha256,
    raised,
    save_atomic,
)
from harness.worker.probe import isolation_probe
from harness.worker.training import DATA_SEED, Regime, make_regime, train_steps

LR = 0.01
# dcp.async_save's executor for each save variant (AsyncCheckpointerType's names); the newer
# parts of torch.distributed.checkpoint are imported where they are used, so that a torch
# without them still runs every other cell
ASYNC_EXECUTORS = {SaveVariant.DCP_ASYNC: "thread", SaveVariant.DCP_ASYNC_PROCESS: "process"}
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
    name: str,
    seed: int,
    alter: Alteration | None = None,
    wrapper: Wrapper = Wrapper.NONE,
    layout: Layout = Layout.FSDP2,
    *,
    other_plan: bool = False,
) -> nn.Module:
    """The model from ``seed`` (changed by ``alter`` first, where a recipe's model changed since
    the save), sharded over all ranks on ``layout``'s device mesh (FSDP2's: fully sharded; a
    tensor-parallel layout's by the model's plan, or ``other_plan``: its styles swapped). A
    wrapper goes where trainers put it: checkpoint_wrapper before sharding, torch.compile of the
    sharded model."""
    model = built(name, seed, alter)
    if wrapper is Wrapper.CHECKPOINT:
        model = wrap(model, Layout.SINGLE, wrapper)
    mesh = device_mesh(device().type, layout, dist.get_world_size())
    place(model, name, layout, mesh, swapped=other_plan)
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
    *,
    other_plan: bool = False,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model in ``layout`` at the job's world size, ``wrapper`` applied, and its AdamW."""
    if Layout(layout) is Layout.DDP:
        model = replicated(name, seed, alter, Wrapper(wrapper))
    else:
        model = sharded(name, seed, alter, Wrapper(wrapper), Layout(layout), other_plan=other_plan)
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
    model: nn.Module,
    regime: Regime,
    data: torch.Generator,
    name: str,
    steps: int,
    layout: Layout = Layout.FSDP2,
) -> None:
    """Training steps whose arithmetic does not depend on the data-parallel degree, so that a run
    resumed at M ranks can be compared bitwise with one at N: every rank draws the same batch,
    only the first data-parallel replica's loss counts (the others' is multiplied by 0; the
    tensor-parallel ranks of that replica share its loss), and the gradients are summed, not
    averaged (:func:`summed_gradients`). Averaging identical gradients over 3 ranks rounds
    differently from 1, 2 or 4: that would say nothing about the checkpoint. A tensor-parallel
    degree does change the arithmetic (a layer's products are summed in other parts): the
    matrix resumes only between meshes of the same degree."""
    replica = rank() // tensor_parallel_ranks(layout, dist.get_world_size())
    train_steps(model, regime, data, name, steps, loss_weight=1.0 if replica == 0 else 0.0)


def summed_gradients(model: nn.Module, layout: Layout = Layout.FSDP2) -> None:
    """FSDP2 reduces gradients by a plain sum (gloo has no pre-multiplied sum); tensor
    parallelism alone reduces none across replicas (it has one)."""
    if layout is Layout.TP:
        return
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


# Every rank's per-rank state, gathered (``dataloader.ranks.rank0``, ...).
ALL_RANKS_KEY = "dataloader.ranks"


def every_ranks_state() -> dict[str, torch.Tensor]:
    """Every rank's own entry (:func:`rank_state`), gathered to every rank under the saving
    rank's name: the same entries on every rank, so DCP writes each once and a loader at any
    world size can read them all."""
    return {
        f"{ALL_RANKS_KEY}.rank{index}": next(iter(own.values()))
        for index, own in enumerate(from_every_rank(rank_state(fresh=False)))
    }


def saved_entries(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Templates for the tensors a checkpoint holds under ``prefix``, from its metadata (the
    loader does not know the saver's world size). The directory's checksum was verified before
    this reads its pickled ``.metadata``."""
    metadata = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {
        key: torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        for key, entry in metadata.items()
        if key.startswith(f"{prefix}.") and isinstance(entry, TensorStorageMetadata)
    }


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


def upload(response: object) -> Future[Any]:
    """The future that completes once an asynchronous save is written: an AsyncSaveResponse's
    upload (newer torch: staging, then the upload), or the future dcp.async_save returns."""
    done = getattr(response, "upload_completion", response)
    if not isinstance(done, Future):
        raise TypeError(f"dcp.async_save returned {type(response).__name__}, not a future")
    return done


def save_dcp(state: dict[str, Any], final: Path, *, executor: str | None = None) -> None:
    """dcp.save from every rank into a folder beside ``final``, renamed by rank 0 once every
    shard is written: the checkpoint appears whole or not at all. ``executor`` (``thread`` or
    ``process``): with dcp.async_save and that executor, on a gloo process group of its own, as
    trainers give it, renamed only once its future has completed on every rank; then dcp.save
    writes the same state beside it, and every file must hold the same bytes
    (:func:`differences`)."""
    partial = final.with_name(final.name + ".partial")
    synchronous = final.with_name(final.name + ".sync")
    if rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(synchronous, ignore_errors=True)
    dist.barrier()
    if executor is not None:
        group = dist.new_group(backend="gloo")
        if not isinstance(group, dist.ProcessGroup):  # every rank is a member
            raise RuntimeError(f"rank {rank()} is outside the new process group")
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

        response = dcp_async_save(
            state,
            checkpoint_id=str(partial),
            process_group=group,
            async_checkpointer_type=AsyncCheckpointerType[executor.upper()],
        )
        done = upload(response)
        done.result()
        dist.barrier()  # every rank's future has completed: the checkpoint is whole
        dcp_save(state, checkpoint_id=str(synchronous))
    else:
        dcp_save(state, checkpoint_id=str(partial))
    dist.barrier()
    if executor is not None:
        # rank 0 compares; every rank learns what it found and raises with it, so that none
        # waits in a collective that rank 0 will never join
        found = from_every_rank(differences(partial, synchronous) if rank() == 0 else [])[0]
        if rank() == 0:
            shutil.rmtree(synchronous)
        if found:
            raise RuntimeError(
                f"dcp.async_save ({executor}) wrote other bytes than dcp.save: {found}"
            )
    if rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    dist.barrier()


def save_hf(state: dict[str, Any], final: Path, *, in_place: bool = False) -> None:
    """DCP's HuggingFaceStorageWriter from every rank (each its own shards, then consolidated
    by the coordinator into the save_pretrained layout: two files, the state's first half and
    its second, and model.safetensors.index.json) into a folder renamed once it is whole. Its
    consolidation finds the shards with an unescaped glob of the folder's path (torch 2.14),
    which a cell's folder name ('[cpu]') defeats: the folder is written where the path holds
    no glob metacharacter, then moved, unless ``in_place`` (the known-bad recipe's)."""
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    partial = final.with_name(final.name + ".partial")
    if not in_place and glob.escape(str(partial)) != str(partial):
        made = tempfile.mkdtemp(prefix="hf-") if rank() == 0 else ""
        partial = Path(from_every_rank(made)[0]) / "checkpoint"
    if rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    keys = list(state)
    mapping = {key: 1 if position < len(keys) / 2 else 2 for position, key in enumerate(keys)}
    writer = HuggingFaceStorageWriter(
        str(partial),
        fqn_to_index_mapping=mapping,
        save_distributed=True,
        enable_consolidation=True,
    )
    dcp_save(state, storage_writer=writer)
    dist.barrier()
    if rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        shutil.move(partial, final)
        if partial.parent != final.parent:
            shutil.rmtree(partial.parent)
    dist.barrier()


# A run folder of interrupted saves: a step's checkpoint per subfolder, and the marker file that
# names the latest complete one (as trainers keep a "latest" pointer).
LATEST = "latest"
STEPS = ("step-1", "step-2")


class GatedWriter(FileSystemWriter):
    """A FileSystemWriter that stops before writing the metadata (the coordinator's ``finish``,
    after every rank's shards) until ``gate`` opens, having set ``reached``: the disk as a crash
    while the save is in flight leaves it, held still long enough to copy."""

    def __init__(self, path: Path, reached: threading.Event, gate: threading.Event) -> None:
        super().__init__(str(path))
        self.reached, self.gate = reached, gate

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        self.reached.set()
        if not self.gate.wait(timeout=GATE_S):
            raise TimeoutError(f"the save's gate stayed shut for {GATE_S} s")
        super().finish(metadata, results)


GATE_S = 60.0


def mark_latest(run: Path, step: str) -> None:
    """Rank 0 points the run's marker at ``step`` (written beside it, then renamed)."""
    if rank() == 0:
        written = run / f".{LATEST}.tmp"
        written.write_text(step + "\n")
        written.replace(run / LATEST)


def save_interrupted(state: dict[str, Any], final: Path, *, early_marker: bool) -> None:
    """Step 1 saved with dcp.save and marked latest; step 2 with dcp.async_save (the thread
    executor, a process group of its own), stopped after its shards, before its metadata. What
    the run folder holds at that moment is copied to ``final``: what a crash there leaves on
    disk. The correct order moves the marker once the future has completed; ``early_marker``
    moves it as soon as the save is issued. The save then completes in the live folder, which
    is removed."""
    live = final.with_name(final.name + ".live")
    if rank() == 0:
        shutil.rmtree(live, ignore_errors=True)
        live.mkdir(parents=True)
    dist.barrier()
    first, second = STEPS
    dcp_save(state, checkpoint_id=str(live / first))
    dist.barrier()
    mark_latest(live, first)
    group = dist.new_group(backend="gloo")
    if not isinstance(group, dist.ProcessGroup):  # every rank is a member
        raise RuntimeError(f"rank {rank()} is outside the new process group")
    reached, gate = threading.Event(), threading.Event()
    writer = GatedWriter(live / second, reached, gate)
    response = dcp_async_save(state, storage_writer=writer, process_group=group)
    done = upload(response)
    if early_marker:
        mark_latest(live, second)
    if rank() == 0:  # the coordinator writes the metadata: its writer holds the gate
        try:
            if not reached.wait(timeout=GATE_S):
                raise TimeoutError(f"step 2's shards were not all written within {GATE_S} s")
            shutil.rmtree(final, ignore_errors=True)
            copy = final.with_name(final.name + ".copy")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(live, copy)
            copy.rename(final)
        finally:
            gate.set()
    done.result()
    dist.barrier()
    if not early_marker:
        mark_latest(live, second)
    dist.barrier()
    if rank() == 0:
        shutil.rmtree(live)
    dist.barrier()


def differences(written: Path, expected: Path) -> list[str]:
    """How two DCP folders differ: files that only one holds, shards with other bytes, and
    metadata that describes other tensors, storage or plans (its ``storage_meta`` names the
    folder and a save id of its own: not compared). Both were written by this job."""
    names = {path.name for path in written.iterdir()} | {path.name for path in expected.iterdir()}
    found = []
    for name in sorted(names - {".metadata"}):
        a, b = written / name, expected / name
        if not (a.is_file() and b.is_file()):
            found.append(f"{name}: in one folder only")
        elif a.read_bytes() != b.read_bytes():
            found.append(f"{name}: other bytes")
    ours, theirs = (FileSystemReader(str(path)).read_metadata() for path in (written, expected))
    for part in ("state_dict_metadata", "storage_data", "planner_data"):
        if getattr(ours, part) != getattr(theirs, part):
            found.append(f".metadata: other {part}")
    return found


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
    """Templates for the generator states a checkpoint holds, by saving rank and kind
    (:func:`saved_entries`)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, template in saved_entries(path, RNG_KEY).items():
        owner, _, kind = key.removeprefix(f"{RNG_KEY}.").partition(".")
        found.setdefault(owner, {})[kind] = template
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
            layout = Layout(spec.layout)
            model = sharded(spec.model, SAVE_SEED, layout=layout)
            summed_gradients(model, layout)  # see invariant_steps
            regime = make_regime(spec.training, model)
            data = torch.Generator().manual_seed(DATA_SEED)
            invariant_steps(model, regime, data, spec.model, RESUME_AT, layout)
            state = train_state(model, regime, data, RESUME_AT)
            state["rng"]["ranks"] = every_ranks_rng()
            save_dcp(state, final)
            # what a resume must reach: this same run, never stopped
            invariant_steps(model, regime, data, spec.model, RESUME_MORE, layout)
            optimizer = regime[0]
        else:
            model, optimizer = distributed_model(
                spec.layout, spec.model, SAVE_SEED, wrapper=spec.wrapper
            )
            train(model, optimizer, spec.model)
            try:
                extra = save_distributed(spec, variant, model, optimizer, final)
            except (Exception, CheckpointException) as exc:
                if classify_exception(exc) is ErrorClass.UNCLASSIFIED:
                    raise  # not a refusal the oracle knows: the save crashed
                # the writer refused the state on every rank (DCP raises on all of them)
                return raised(exc) | {
                    "rank": rank(),
                    "probe": isolation_probe(),
                    "rank_probes": probes,
                    "torch": torch.__version__,
                    "work_s": time.perf_counter() - started,
                }
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
    elif variant is SaveVariant.LOCAL_SHARDS:  # each rank its own pieces, as plain tensors
        pieces = {
            key: (value.to_local() if isinstance(value, DTensor) else value).detach().clone()
            for key, value in model.state_dict().items()
        }
        save_atomic(pieces, rank_path(final, rank()))
    elif variant is SaveVariant.DCP_RANK_STATE:
        own = rank_state(fresh=False)
        save_dcp(model_and_optimizer(model, optimizer) | own, final)
        return gathered({key: tensor_record(value, "cpu") for key, value in own.items()})
    elif variant is SaveVariant.DCP_RANK_STATE_ALL:
        everyone = every_ranks_state()
        save_dcp(model_and_optimizer(model, optimizer) | everyone, final)
        return {key: tensor_record(value, "cpu") for key, value in everyone.items()}
    elif variant is SaveVariant.DCP:
        save_dcp(model_and_optimizer(model, optimizer), final)
    elif variant in (SaveVariant.DCP_ASYNC_INTERRUPTED, SaveVariant.DCP_ASYNC_EARLY_MARKER):
        early = variant is SaveVariant.DCP_ASYNC_EARLY_MARKER
        save_interrupted(model_and_optimizer(model, optimizer), final, early_marker=early)
    elif variant in (SaveVariant.SAFETENSORS_DCP_HF, SaveVariant.SAFETENSORS_DCP_HF_IN_PLACE):
        in_place = variant is SaveVariant.SAFETENSORS_DCP_HF_IN_PLACE
        save_hf(get_model_state_dict(model), final, in_place=in_place)
    elif variant in ASYNC_EXECUTORS:
        save_dcp(model_and_optimizer(model, optimizer), final, executor=ASYNC_EXECUTORS[variant])
    else:
        raise ValueError(f"{spec.cell_key}: a distributed layout does not save {variant}")
    return {}
