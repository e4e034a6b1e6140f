"""What the launcher costs per cell over a real run of the matrix (spawn vs zygote), and how fast
a tensor digest reads bytes (the fingerprint every worker takes of every tensor).

Part 1, the matrix: the first ``--cells`` cells (default 64) of the default scenarios on the CPU
fallback, in matrix order, leaving out models that need torchvision (resnet, whose workers would
make the spawn half long), run once under each launcher, each in a fresh temporary work folder,
``--jobs`` at a time.
Each run goes through the run use case, as ``ckpt-matrix run`` does; its start-up (the work
folder, the launcher with the zygote's own ``import torch``, and the environment's worker, which
measures the models) is reported as "start-up", not counted in the run. A recording
launcher keeps every job's ``JobRun``: ``duration_s`` is the launcher-observed wall of the job,
``report["work_s"]`` the work the worker measured itself; the per-cell overhead is
``sum(duration_s - work_s) / cells`` over every save and load job of the run. The two runs must
agree cell by cell (outcome, error class, message, devices:
``harness.certify.diff.compare``), or the script exits 1.

Part 2, the digests: on ``torchvision.models.resnet152()``'s state_dict (randomly initialised),
GB/s of blake2b-128 as the previous ``tensor_digest`` fed it (through ``ctypes.string_at``, a
copy), blake2b-128, sha256 and xxh3-128 fed in place, ``torch.equal`` against a copy, and
``tensor_digest`` as shipped, each beside ``dst.copy_(src)`` into preallocated tensors; one
thread, as in a worker; best of ``--repeats``, the methods interleaved in every round.

The last line is ``overhead ratio zygote/spawn: R``. Where one worker's time goes (interpreter,
``import torch``, the work; a GPU worker against a CPU one) is ``benchmarks/cell_overhead.py``.

    python benchmarks/bench_matrix.py [--cells 64] [--jobs N] [--repeats 5] [--keep DIR]
    python benchmarks/bench_matrix.py --digests-only
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness.certify.diff import compare
from harness.core.cell import Cell
from harness.core.jobs import Job, JobRun
from harness.core.results import read_results
from harness.launchers.protocol import Launcher
from harness.run.jobs import DEFAULT_TIMEOUT_S
from harness.run.options import RunOptions
from harness.run.planning import Planned, plan_matrix
from harness.run.usecase import Destination, MatrixWork, execute

LAUNCHER_NAMES = ("spawn", "zygote")


@dataclass
class RecordingLauncher:
    """Keeps every ``JobRun`` its inner launcher hands back (saves and loads)."""

    inner: Launcher
    runs: list[JobRun] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, job: Job) -> JobRun:
        run = self.inner.launch(job)
        with self._lock:
            self.runs.append(run)
        return run

    def stop_all(self) -> None:
        self.inner.stop_all()


@dataclass(frozen=True, kw_only=True)
class LauncherRun:
    name: str
    cells_run: tuple[Cell, ...]
    startup_s: float  # the warm-up save job, which starts the launcher (not counted below)
    wall_s: float  # the run of the cells, from the first job to the last result
    runs: tuple[JobRun, ...]
    results_path: Path

    @property
    def loads(self) -> int:
        """Jobs named after a cell (the others are save jobs, named after their save key)."""
        ids = {cell.id for cell in self.cells_run}
        return sum(1 for run in self.runs if run.name in ids)

    @property
    def job_s(self) -> float:
        return sum(run.duration_s for run in self.runs)

    @property
    def work_s(self) -> float:
        return sum(work_of(run) for run in self.runs)

    @property
    def unreported(self) -> int:
        """Jobs without a report: all their time counts as overhead."""
        return sum(1 for run in self.runs if run.report is None or "work_s" not in run.report)

    @property
    def cells(self) -> int:
        return len(self.cells_run)

    @property
    def overhead_per_cell_s(self) -> float:
        return (self.job_s - self.work_s) / self.cells


def work_of(run: JobRun) -> float:
    return float(run.report.get("work_s", 0.0)) if run.report is not None else 0.0


def pick_cells(count: int) -> Planned:
    """The default matrix (CPU fallback, as planned by the CLI) cut to its first ``count`` cells
    whose model needs no torchvision, in matrix order."""
    planned = plan_matrix(RunOptions())
    usable = [cell for cell in planned.cells if not cell.model_spec.needs_torchvision]
    if len(usable) < count:
        raise SystemExit(f"--cells {count}: the default matrix has only {len(usable)} such cells")
    return dataclasses.replace(planned, cells=tuple(usable[:count]))


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run_under(
    name: str,
    planned: Planned,
    *,
    jobs: int,
    timeout_s: float,
    results_dir: Path,
) -> LauncherRun:
    """The planned cells through the run use case (as ``ckpt-matrix run`` runs them) on the
    launcher ``name``, every cell job recorded."""
    if package_version("torch") is None:
        raise SystemExit("torch is not installed in this interpreter")
    options = RunOptions(launcher=name, jobs=jobs, timeout_s=timeout_s)
    recorders: list[RecordingLauncher] = []

    def record(launcher: Launcher) -> Launcher:
        recorders.append(RecordingLauncher(launcher))
        return recorders[-1]

    results_path = results_dir / f"{name}.jsonl"
    work = MatrixWork(planned=planned, options=options, out=results_path, record=record)
    finished = execute(work, options, Destination(out=results_path, overwrite=True))
    return LauncherRun(
        name=name,
        cells_run=planned.cells,
        startup_s=finished.startup_s,
        wall_s=finished.cells_s,
        runs=tuple(run for recorder in recorders for run in recorder.runs),
        results_path=results_path,
    )


def agreement(runs: Sequence[LauncherRun]) -> tuple[list[str], collections.Counter[str]]:
    """Every difference between the two runs' results (none: they agree), and the outcomes of
    the first."""
    baseline, candidate = (read_results(run.results_path) for run in runs)
    diff = compare(baseline, candidate)
    lines = [f"{c.kind}: {c.id}: {c.before} -> {c.after}" for c in diff.changes]
    lines += [f"only under {runs[0].name}: {cell}" for cell in diff.only_in_baseline]
    lines += [f"only under {runs[1].name}: {cell}" for cell in diff.only_in_candidate]
    return lines, collections.Counter(str(result.outcome) for result in baseline.results)


# -- digests ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Throughput:
    name: str
    best_s: float
    gb_per_s: float
    of_memcpy: float


def digest_throughput(repeats: int) -> tuple[int, int, list[Throughput]]:
    """(tensors, bytes, figures) for the digests on resnet152's state_dict; see the docstring."""
    import ctypes
    import hashlib

    import torch
    import torchvision
    import xxhash

    from harness.worker.fingerprint import raw_bytes, tensor_digest

    torch.set_num_threads(1)  # as in a worker
    torch.manual_seed(0)
    tensors = [
        t.detach().contiguous() for t in torchvision.models.resnet152().state_dict().values()
    ]
    flats = [t.reshape(-1).view(torch.uint8) for t in tensors]
    total = sum(flat.numel() for flat in flats)
    copies = [t.clone() for t in tensors]
    targets = [torch.empty_like(t) for t in tensors]

    def memcpy() -> None:
        for target, tensor in zip(targets, tensors, strict=True):
            target.copy_(tensor)

    def blake2b_copied() -> None:  # the previous tensor_digest's way of reading the bytes
        for flat in flats:
            hashlib.blake2b(ctypes.string_at(flat.data_ptr(), flat.numel()), digest_size=16)

    def in_place(make: Callable[[Any], Any]) -> Callable[[], None]:
        def digest_all() -> None:
            for flat in flats:
                make(raw_bytes(flat)).hexdigest()

        return digest_all

    def equal() -> None:
        for tensor, copy in zip(tensors, copies, strict=True):
            torch.equal(tensor, copy)

    def shipped() -> None:
        for tensor in tensors:
            tensor_digest(tensor)

    methods: dict[str, Callable[[], None]] = {
        "memcpy: dst.copy_(src), preallocated": memcpy,
        "blake2b-128, via ctypes.string_at (copy)": blake2b_copied,
        "blake2b-128, in place": in_place(lambda b: hashlib.blake2b(b, digest_size=16)),
        "sha256, in place": in_place(hashlib.sha256),
        "xxh3-128, in place": in_place(xxhash.xxh3_128),
        "torch.equal against a copy": equal,
        "tensor_digest as shipped": shipped,
    }
    for method in methods.values():
        method()  # a round not counted: every page touched, every lazy import done
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeats):
        for name, method in methods.items():
            started = time.perf_counter()
            method()
            best[name] = min(best[name], time.perf_counter() - started)
    memcpy_s = best["memcpy: dst.copy_(src), preallocated"]
    figures = [
        Throughput(name=name, best_s=s, gb_per_s=total / s / 1e9, of_memcpy=memcpy_s / s)
        for name, s in best.items()
    ]
    return len(tensors), total, figures


def print_digests(repeats: int) -> None:
    count, total, figures = digest_throughput(repeats)
    print(
        f"digests on resnet152's state_dict: {count} tensors, {total / 1e6:.1f} MB, "
        f"1 thread, best of {repeats}"
    )
    for figure in figures:
        print(
            f"  {figure.name:42} {figure.gb_per_s:7.2f} GB/s  {figure.of_memcpy:5.2f} x memcpy"
            f"  ({figure.best_s * 1e3:7.1f} ms)"
        )


# -- main ---------------------------------------------------------------------------------------


def default_jobs() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_cells(cells: Sequence[Cell]) -> str:
    models = collections.Counter(cell.model for cell in cells)
    saves = len({cell.save_key.id for cell in cells})
    by_model = ", ".join(f"{model} {n}" for model, n in models.items())
    return (
        f"cells: the first {len(cells)} of the default matrix (CPU fallback, no torchvision "
        f"model): {by_model}; {saves} save jobs and {len(cells)} load jobs per run"
    )


HEADER = "launcher  cells  saves  loads  start-up s   wall s  job time s  work s  overhead ms/cell"


def print_run(run: LauncherRun) -> None:
    """One row under ``HEADER``: ``job time`` sums ``duration_s`` over every job, ``work``
    the workers' own ``work_s``; overhead = (job time - work) / cells."""
    print(
        f"{run.name:8}  {run.cells:5}  {len(run.runs) - run.loads:5}  {run.loads:5}  "
        f"{run.startup_s:10.2f}  {run.wall_s:7.2f}  {run.job_s:10.2f}  {run.work_s:6.2f}  "
        f"{run.overhead_per_cell_s * 1e3:16.1f}"
        + (f"  ({run.unreported} jobs reported no work_s)" if run.unreported else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cells", type=int, default=64, help="cells per launcher (>= 1)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="cells at a time")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="s per job")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the digest timings")
    parser.add_argument("--keep", type=Path, help="write spawn.jsonl and zygote.jsonl here")
    parser.add_argument("--digests-only", action="store_true", help="only part 2")
    args = parser.parse_args(argv)
    if args.cells < 1 or args.jobs < 1 or args.repeats < 1:
        parser.error("--cells, --jobs and --repeats must be at least 1")
    if args.digests_only:
        print_digests(args.repeats)
        return 0

    planned = pick_cells(args.cells)
    print(describe_cells(planned.cells))
    print(
        f"torch {package_version('torch')}, python {sys.version.split()[0]}, "
        f"{default_jobs()} CPUs, --jobs {args.jobs}"
    )
    results_dir = args.keep or Path(tempfile.mkdtemp(prefix="bench-matrix-results-"))
    results_dir.mkdir(parents=True, exist_ok=True)
    try:
        runs = [
            run_under(
                name, planned, jobs=args.jobs, timeout_s=args.timeout, results_dir=results_dir
            )
            for name in LAUNCHER_NAMES
        ]
        differences, outcomes = agreement(runs)
    finally:
        if args.keep is None:
            shutil.rmtree(results_dir, ignore_errors=True)
    print(HEADER)
    for run in runs:
        print_run(run)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    if differences:
        print(f"the two runs DISAGREE ({len(differences)} differences):")
        for line in differences:
            print(f"  {line}")
    else:
        print(
            f"the two runs agree: every cell has the same outcome, error class, message and "
            f"devices under both launchers ({tally})"
        )
    print_digests(args.repeats)
    spawn, zygote = runs
    with_startup = [(run.job_s - run.work_s + run.startup_s) / run.cells for run in runs]
    print(
        f"overhead with the launcher's start-up spread over the cells: "
        f"spawn {with_startup[0] * 1e3:.1f} ms/cell, zygote {with_startup[1] * 1e3:.1f} ms/cell, "
        f"ratio {with_startup[1] / with_startup[0]:.4g}"
    )
    print(f"wall ratio zygote/spawn: {zygote.wall_s / spawn.wall_s:.4g}")
    ratio = zygote.overhead_per_cell_s / spawn.overhead_per_cell_s
    print(f"overhead ratio zygote/spawn: {ratio:.4g}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
