"""A DCP directory saved by 4 ranks on the CPU (gloo): DTensors split along each dimension, over a
2x2 mesh, unevenly and not at all. Each rank runs ``_rank`` in a process of its own."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

RANKS = 4
# Each tensor's shape, and the placements it is saved with: over the 4 ranks in a row, or over
# a 2x2 mesh where two placements are given.
TENSORS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "rows": ((8, 3), ("Shard(0)",)),
    "cols": ((3, 8), ("Shard(1)",)),
    "uneven": ((5, 2), ("Shard(0)",)),
    "grid": ((4, 6), ("Shard(0)", "Shard(1)")),
    "rows_twice": ((8, 2), ("Shard(0)", "Shard(0)")),
    "replicated": ((2, 2), ("Replicate()",)),
}


def full_tensors() -> dict[str, torch.Tensor]:
    """The whole tensors the ranks split and save, by name; "plain" is saved as it is."""
    generator = torch.Generator().manual_seed(0)
    full = {name: torch.randn(shape, generator=generator) for name, (shape, _) in TENSORS.items()}
    return {**full, "plain": torch.arange(3.0)}


def _rank(rank: int, folder: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    warnings.simplefilter("ignore")  # DTensor's and DCP's own notices; the files are what matter
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=RANKS
    )
    meshes = {1: init_device_mesh("cpu", (RANKS,)), 2: init_device_mesh("cpu", (2, 2))}
    placements = {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Replicate()": Replicate()}
    full = full_tensors()  # every rank starts from the same full tensors
    state: dict[str, torch.Tensor] = {
        name: distribute_tensor(full[name], meshes[len(names)], [placements[n] for n in names])
        for name, (_, names) in TENSORS.items()
    }
    state["plain"] = full["plain"]  # a plain tensor every rank holds: saved once
    dcp_save(state, checkpoint_id=f"{folder}/checkpoint")
    dist.destroy_process_group()


def save(folder: Path, timeout_s: float = 120.0) -> Path:
    """``folder/checkpoint``, written by 4 processes; raises if one fails or they overrun."""
    from torch.multiprocessing.spawn import start_processes

    folder.mkdir(parents=True, exist_ok=True)
    context = start_processes(  # type: ignore[no-untyped-call]
        _rank, args=(str(folder),), nprocs=RANKS, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {RANKS} ranks saving into {folder} ran past {timeout_s} s")
    return folder / "checkpoint"
