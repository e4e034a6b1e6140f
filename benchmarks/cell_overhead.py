"""Where one worker's time goes: the interpreter, ``import torch``, the work, and on a GPU what
CUDA's start-up adds.

The anatomy of a single worker, not of a run: one save and N loads of the trap model, each load
timed alone (medians), beside a bare interpreter and ``import torch``; the same loads forked
from a zygote; and where the machine has a GPU, the same cell again with the first GPU visible,
spawned and forked ("GPU worker / CPU worker": CUDA's start-up in every GPU worker). The
per-cell launcher overhead of a whole run of the matrix, spawn against zygote, and the digests'
throughput are ``benchmarks/bench_matrix.py``.

    python benchmarks/cell_overhead.py [--loads 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.core.axes import Format, Layout
from harness.core.cell import Cell, Visibility
from harness.core.devices import DeviceMap
from harness.core.jobs import JobRun
from harness.launchers.protocol import Launcher
from harness.launchers.spawn import SpawnLauncher
from harness.launchers.zygote import ZygoteLauncher
from harness.run.artifacts import ArtifactStore
from harness.run.inventory import read_inventory
from harness.run.jobs import JobFactory, worker_env


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=worker_env(()), check=True, capture_output=True)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Timing:
    wall: float  # median whole-process time of a load worker
    work: float  # median time of the load inside it
    save: float  # the save worker, one run


def time_workers(
    visibility: Visibility, devices: DeviceMap, loads: int, launcher: Launcher | None = None
) -> Timing:
    """One save and ``loads`` loads of the trap model under ``visibility`` (() = CPU)."""
    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe="strip_prefix",
        save_visibility=visibility,
        load_visibility=visibility,
        save_device="cuda:0" if visibility else "cpu",
    )
    launcher = launcher or SpawnLauncher()
    with tempfile.TemporaryDirectory() as folder:
        factory = JobFactory(workdir=Path(folder), devices=devices)
        artifact = ArtifactStore(factory, launcher).get(cell.save_key)
        if not artifact.ok or artifact.report is None:
            raise SystemExit(f"save failed: {artifact.failure}")
        runs: list[JobRun] = []
        for _ in range(loads):
            job = factory.load_job(
                cell, artifact_path=artifact.path, sha256=artifact.report["sha256"]
            )
            run = launcher.launch(job)
            if not run.ok or run.report is None or run.report.get("status") != "loaded":
                raise SystemExit(f"load failed: {run.failure()}\n{run.stderr_tail}")
            runs.append(run)
    return Timing(
        wall=statistics.median(run.duration_s for run in runs),
        work=statistics.median(float(run.report["work_s"]) for run in runs if run.report),
        save=artifact.duration_s,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    python = sys.executable
    bare = statistics.median(timed([python, "-c", "pass"]) for _ in range(5))
    torch_import = statistics.median(timed([python, "-c", "import torch"]) for _ in range(5))
    inventory = read_inventory(os.environ)
    devices = DeviceMap(inventory.uuids)
    cpu = time_workers((), devices, args.loads)
    gpu = time_workers(inventory.indices[:1], devices, args.loads) if inventory.gpus else None
    forked_gpu: Timing | None = None
    with tempfile.TemporaryDirectory() as folder:
        zygote = ZygoteLauncher(env=worker_env(()), log_path=Path(folder) / "zygote.log")
        try:
            time_workers((), devices, 1, zygote)  # the zygote's own start (import torch)
            forked = time_workers((), devices, args.loads, zygote)
            if inventory.gpus:
                forked_gpu = time_workers(inventory.indices[:1], devices, args.loads, zygote)
        finally:
            zygote.stop_all()

    print(f"python -c pass                 {bare:7.3f} s (median of 5)")
    print(f"python -c 'import torch'       {torch_import:7.3f} s (median of 5)")
    print(f"load worker, whole process     {cpu.wall:7.3f} s (median of {args.loads})")
    print(f"load worker, work inside it    {cpu.work:7.3f} s (median of {args.loads})")
    print(f"save worker, whole process     {cpu.save:7.3f} s (1 run)")
    print(f"zygote load worker, whole      {forked.wall:7.3f} s (median of {args.loads})")
    if gpu is not None:
        name = inventory.gpus[0].name
        print(f"GPU load worker ({name}), whole process {gpu.wall:7.3f} s (median of {args.loads})")
        print(f"GPU load worker, work inside it {gpu.work:7.3f} s (median of {args.loads})")
        print(f"GPU save worker, whole process {gpu.save:7.3f} s (1 run)")
    if forked_gpu is not None:
        print(f"zygote GPU load worker, whole  {forked_gpu.wall:7.3f} s (median of {args.loads})")
    print()
    print(f"ratio worker wall / work inside      {cpu.wall / cpu.work:7.1f}x")
    print(f"ratio import torch / worker wall     {torch_import / cpu.wall:7.2f}")
    print(f"ratio bare interpreter / worker wall {bare / cpu.wall:7.2f}")
    print(f"ratio spawned / zygote load worker   {cpu.wall / forked.wall:7.1f}x")
    if gpu is not None:
        print(f"ratio GPU worker / CPU worker        {gpu.wall / cpu.wall:7.2f}")
        print(f"ratio GPU worker wall / work inside  {gpu.wall / gpu.work:7.1f}x")
        if forked_gpu is not None:
            print(f"ratio spawned / zygote GPU worker    {gpu.wall / forked_gpu.wall:7.1f}x")
    else:
        print("no GPU here: the GPU worker figures need one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
