"""Where a cell's time goes: starting a worker process versus the work it does.

Runs one save and N loads of the trap model through the real spawn launcher, and times a bare
interpreter and ``import torch`` alongside, all in one run. Prints medians and ratios; the ratio
"worker wall / work inside it" is the figure a faster launcher (fork from a process that has
imported torch) would attack.

    python benchmarks/cell_overhead.py [--loads 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.artifacts import ArtifactStore
from harness.axes import Format, Layout
from harness.cell import Cell
from harness.plan import JobFactory, worker_env
from harness.runner import JobRun, SpawnLauncher


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=worker_env(()), check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    python = sys.executable
    bare = statistics.median(timed([python, "-c", "pass"]) for _ in range(5))
    torch_import = statistics.median(timed([python, "-c", "import torch"]) for _ in range(5))

    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe="strip_prefix",
    )
    launcher = SpawnLauncher()
    with tempfile.TemporaryDirectory() as folder:
        factory = JobFactory(workdir=Path(folder))
        artifact = ArtifactStore(factory, launcher).get(cell.save_key)
        if not artifact.ok or artifact.report is None:
            print(artifact.failure, file=sys.stderr)
            return 1
        loads: list[JobRun] = []
        for _ in range(args.loads):
            job = factory.load_job(
                cell, artifact_path=artifact.path, sha256=artifact.report["sha256"]
            )
            run = launcher.launch(job)
            if not run.ok or run.report is None or run.report.get("status") != "loaded":
                print(run.failure(), run.stderr_tail, file=sys.stderr)
                return 1
            loads.append(run)
    wall = statistics.median(run.duration_s for run in loads)
    work = statistics.median(float(run.report["work_s"]) for run in loads if run.report)
    print(f"python -c pass                 {bare:7.3f} s (median of 5)")
    print(f"python -c 'import torch'       {torch_import:7.3f} s (median of 5)")
    print(f"load worker, whole process     {wall:7.3f} s (median of {args.loads})")
    print(f"load worker, work inside it    {work:7.3f} s (median of {args.loads})")
    print(f"save worker, whole process     {artifact.duration_s:7.3f} s (1 run)")
    print()
    print(f"ratio worker wall / work inside      {wall / work:7.1f}x")
    print(f"ratio import torch / worker wall     {torch_import / wall:7.2f}")
    print(f"ratio bare interpreter / worker wall {bare / wall:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
