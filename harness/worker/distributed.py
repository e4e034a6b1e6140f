"""Distributed layouts in a worker: one process per rank, joined by PyTorch's env:// rendezvous
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, set by torchrun or by the zygote).

FSDP2 (``fully_shard`` over a 1-D mesh) trains with AdamW and saves model and optimizer state with
``torch.distributed.checkpoint`` (or, by other recipes, a gathered full state dict, or each rank's
own state_dict); a loader at another world size loads it into a fresh model and optimizer. DDP
(a replica per rank) saves on rank 0. Every rank runs the same code; rank 0 gathers the full
state (``full_state_dict``, ``cpu_offload``) and reports its digests, which the verdict compares
like any other cell's. Ranks run on the CPU with gloo; with GPUs, NCCL and one GPU per rank are
next.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.axes import Layout, SaveVariant
from harness.jobspec import (
    LOAD_SEED,
    OPTIMIZER_PREFIX,
    SAVE_SEED,
    TRAIN_STEPS,
    LoadSpec,
    SaveSpec,
    rank_path,
)
from harness.recipes import RECIPES
from harness.worker.fingerprint import nested_tensors, tensor_digest, tensor_record
from harness.worker.main import artifact_sha256, raised, save_atomic, verify_checksum
from harness.worker.models import build, example_input
from harness.worker.probe import isolation_probe

LR = 0.01


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the job's ranks (gloo on the CPU) for the duration of the job."""
    dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def sharded(name: str, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model from ``seed``, fully sharded over all ranks, and its AdamW."""
    model = build(name, seed=seed)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def replicated(name: str, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model from ``seed`` in DistributedDataParallel (a replica per rank), and its AdamW."""
    model = nn.parallel.DistributedDataParallel(build(name, seed=seed))
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def distributed_model(layout: str, name: str, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    return (replicated if Layout(layout) is Layout.DDP else sharded)(name, seed)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, name: str) -> None:
    """A few AdamW steps on the same batches on every rank (FSDP2 averages the gradients)."""
    model.train()
    generator = torch.Generator().manual_seed(99)
    batch = example_input(name)
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        noisy = batch + 0.1 * torch.randn(batch.shape, generator=generator)
        model(noisy).pow(2).mean().backward()
        optimizer.step()
    model.eval()


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
    device = str(next(model.parameters()).device)  # where the shards live, not the copy
    return {
        prefix + path: tensor_record(tensor, device)
        for prefix, state in (("", model_state), (OPTIMIZER_PREFIX, optim_state))
        for path, tensor in nested_tensors(state)
    }


def output_digest(model: nn.Module, name: str) -> str:
    """An eval-mode forward pass on every rank (FSDP2 gathers the parameters for it)."""
    model.eval()
    with torch.no_grad():
        return tensor_digest(model(example_input(name)))


def save_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, final: Path) -> None:
    """dcp.save from every rank into a folder beside ``final``, renamed by rank 0 once every
    shard is written: the checkpoint appears whole or not at all."""
    partial = final.with_name(final.name + ".partial")
    if rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp_save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(partial))
    dist.barrier()
    if rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    dist.barrier()


def run_save(spec: SaveSpec) -> dict[str, Any]:
    started = time.perf_counter()
    final = Path(spec.artifact_path)
    with process_group():
        model, optimizer = distributed_model(spec.layout, spec.model, SAVE_SEED)
        train(model, optimizer, spec.model)
        variant = SaveVariant(spec.variant)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            if variant not in (SaveVariant.STATE_DICT, SaveVariant.MODULE_STATE_DICT):
                raise ValueError(f"{spec.cell_key}: DDP saves state_dict or module_state_dict")
            if rank() == 0:  # every rank holds the whole model: rank 0 saves, as trainers do
                inner = model.module if variant is SaveVariant.MODULE_STATE_DICT else model
                save_atomic(inner.state_dict(), final)
        elif variant is SaveVariant.FULL_STATE_DICT:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(model, options=options)  # a collective: every rank
            if rank() == 0:
                save_atomic(state, final)
        elif variant is SaveVariant.SHARDED_STATE_DICT:  # the mistake under test: each rank
            save_atomic(model.state_dict(), rank_path(final, rank()))
        else:
            save_dcp(model, optimizer, final)
        tensors = full_tensors(model, optimizer)
        output = output_digest(model, spec.model)
        dist.barrier()
    report: dict[str, Any] = {"status": "saved", "rank": rank(), "probe": isolation_probe()}
    if rank() == 0:
        files = list(final.rglob("*")) if final.is_dir() else [final]
        report.update(
            sha256=artifact_sha256(final),
            bytes=sum(p.stat().st_size for p in files if p.is_file()),
            tensors=tensors,
            output_digest=output,
            output_device="cpu",
            tagged_as=None,
            serialization="dcp" if final.is_dir() else "zip",
            world=int(os.environ.get("WORLD_SIZE", "1")),
            torch=torch.__version__,
        )
    report["work_s"] = time.perf_counter() - started
    return report


def _dcp_reshard(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    model_state, optim_state = get_state_dict(model, optimizer)
    # dcp.load fills the sharded tensors of both dicts in place
    dcp_load({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def _ddp_module_state_dict(model: nn.Module, _: torch.optim.Optimizer, path: Path) -> None:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    inner.load_state_dict(torch.load(path, weights_only=True))


def _ddp_strip_prefix(model: nn.Module, _: torch.optim.Optimizer, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    consume_prefix_in_state_dict_if_present(state, "module.")
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    inner.load_state_dict(state)


# How each recipe of a distributed layout loads, into a fresh model and optimizer of that layout
# at the loader's world size (harness.worker.recipes.PERFORM holds the recipes of one process).
PERFORM: dict[str, Callable[[nn.Module, torch.optim.Optimizer, Path], None]] = {
    "dcp_reshard": _dcp_reshard,
    "ddp_module_state_dict": _ddp_module_state_dict,
    "ddp_strip_prefix": _ddp_strip_prefix,
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
        model, optimizer = distributed_model(spec.layout, spec.model, LOAD_SEED)
        before = full_tensors(model, None)
        try:
            # DCP reads .metadata with pickle: only a directory this run wrote, checksum verified
            verify_checksum(path, spec.artifact_sha256)
            PERFORM[spec.recipe](model, optimizer, path)
            restored = optimizer if RECIPES[spec.recipe].restores_optimizer else None
            tensors = full_tensors(model, restored)
            output = output_digest(model, spec.model)
        except (Exception, CheckpointException) as exc:  # CheckpointException: a BaseException
            report.update(raised(exc))
        else:
            report.update(
                status="loaded", tensors=tensors, output_digest=output, output_device="cpu"
            )
        report["before"] = before
    report["work_s"] = time.perf_counter() - started
    return report
