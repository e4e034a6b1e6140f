"""A user's model against the zoo's, per cell: a small transformers model
(``ckpt_hf_models:gpt2``, GPT-2 from a tiny config as transformers gives it, from
tests/data/real_models) and the zoo's ``trap`` model run the same cells of
the shipped scenarios (``--model``, selected by ``-k``, default the 36 cells that save and load
on one CPU process), each a whole ``ckpt-matrix run`` in a fresh process and a fresh work
folder, ``--jobs`` at a time, under the zygote launcher:

- ``zoo``: ``--model trap``;
- ``user, each worker imports``: ``--model ckpt_hf_models:gpt2`` with
  ``CKPT_MATRIX_PRELOAD_MODELS=0`` (every forked worker imports the module, and so
  transformers, again: as before the zygote imported a user's module);
- ``user, zygote imports``: the same, as shipped (the zygote imports the module once).

Per cell: the run's own time for its cells (``this run took S s for N cells``: from the first
cell to the last, the zygote's start and the environment job before it left out) over N; and
the whole command's wall over N. The zoo's run and the shipped user run alternate ``--repeats``
times (default 2; the best of each counts: other work on the machine only slows a run down),
then the slow user run runs once. The ratios are user/zoo, measured in this one invocation. The
two user runs must agree cell by cell (outcome, error class, message, devices:
``harness.certify.diff.compare``), or the script exits 1. Nothing is downloaded
(``HF_HUB_OFFLINE=1``).

    python benchmarks/user_model.py [-k TEXT] [--jobs N] [--repeats 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.certify.diff import compare
from harness.core.results import read_results
from harness.launchers.zygote import PRELOAD_MODELS

HERE = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_models"
ZOO_MODEL = "trap"
USER_MODEL = "ckpt_hf_models:gpt2"
DEFAULT_SELECT = "save=single[cpu]-load=single[cpu]-"
TOOK = re.compile(r"this run took ([0-9.]+) s for ([0-9]+) cells")


@dataclass(frozen=True, kw_only=True)
class Run:
    name: str
    cells: int
    cells_s: float  # the run's own figure: first cell to last
    wall_s: float  # the whole command
    outcomes: Counter[str]
    results: Path

    @property
    def per_cell_s(self) -> float:
        return self.cells_s / self.cells

    @property
    def wall_per_cell_s(self) -> float:
        return self.wall_s / self.cells


def run_matrix(
    name: str, stem: str, model: str, *, preload: bool, select: str, jobs: int, folder: Path
) -> Run:
    out, workdir = folder / f"{stem}.jsonl", folder / f"work-{stem}"
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    env[PRELOAD_MODELS] = "1" if preload else "0"
    command = [sys.executable, "-m", "harness.cli", "run", "--model", model, "-k", select]
    command += ["--jobs", str(jobs), "--out", str(out), "--workdir", str(workdir)]
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
    wall_s = time.monotonic() - started
    took = TOOK.search(done.stdout)
    if done.returncode != 0 or took is None:
        raise SystemExit(
            f"{name}: {' '.join(command)} exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    results = read_results(out)
    return Run(
        name=name,
        cells=int(took.group(2)),
        cells_s=float(took.group(1)),
        wall_s=wall_s,
        outcomes=Counter(str(result.outcome) for result in results.results),
        results=out,
    )


def disagreements(before: Run, after: Run) -> list[str]:
    """Every difference between two runs of the same model (none: they agree)."""
    diff = compare(read_results(before.results), read_results(after.results))
    lines = [f"{c.kind}: {c.id}: {c.before} -> {c.after}" for c in diff.changes]
    lines += [f"only in {before.name}: {cell}" for cell in diff.only_in_baseline]
    lines += [f"only in {after.name}: {cell}" for cell in diff.only_in_candidate]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-k", dest="select", default=DEFAULT_SELECT, help="cells whose id has it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cells at a time")
    parser.add_argument("--repeats", type=int, default=2, help="runs of zoo and shipped user")
    parser.add_argument("--keep", type=Path, help="keep the results and work folders here")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeats < 1:
        parser.error("--jobs and --repeats must be at least 1")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-user-model-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"cells: -k {args.select!r} of the shipped scenarios, with --model {ZOO_MODEL} and with "
        f"--model {USER_MODEL}; --jobs {args.jobs}, {os.cpu_count()} CPUs, zygote launcher"
    )
    try:
        run = functools.partial(run_matrix, select=args.select, jobs=args.jobs, folder=folder)
        zoos, afters = [], []
        for repeat in range(args.repeats):
            zoos.append(run("zoo", f"zoo-{repeat}", ZOO_MODEL, preload=True))
            afters.append(run("user, zygote imports", f"user-{repeat}", USER_MODEL, preload=True))
        before = run("user, each worker imports", "user-before", USER_MODEL, preload=False)
        zoo = min(zoos, key=lambda one: one.cells_s)
        after = min(afters, key=lambda one: one.cells_s)
        for one in (*zoos, *afters):
            print(f"  {one.name}: {one.per_cell_s:.3f} s/cell, whole command {one.wall_s:.1f} s")
        differences = disagreements(before, after)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'run':28} cells   cells s   s/cell   wall s  wall/cell  outcomes")
    for one in (zoo, before, after):
        print(
            f"{one.name:28} {one.cells:5}  {one.cells_s:8.1f}  {one.per_cell_s:7.3f}  "
            f"{one.wall_s:7.1f}  {one.wall_per_cell_s:9.3f}  "
            + ", ".join(f"{n} {outcome}" for outcome, n in sorted(one.outcomes.items()))
        )
    if differences:
        print(f"the two user runs DISAGREE ({len(differences)} differences):")
        for line in differences:
            print(f"  {line}")
    else:
        print("the two user runs agree: every cell has the same outcome, error class, message")
    for one in (before, after):
        print(
            f"per-cell ratio {one.name} / zoo: {one.per_cell_s / zoo.per_cell_s:.3g} "
            f"(whole command: {one.wall_per_cell_s / zoo.wall_per_cell_s:.3g})"
        )
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
