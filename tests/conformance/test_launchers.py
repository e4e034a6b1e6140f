"""The zygote (the default launcher) and spawn give the same results: at least one cell of every
recipe, format and wrapper runs under both, with a distributed cell from one world size to
another (torchrun's ranks against forked ones), and each cell must agree on outcome, error class,
message, every tensor digest and every device.

Both launchers load the same file, the one the conformance matrix's zygote saved (it is saved
once per run, whichever test needs it first), so a difference is the loading process's. One
save of each kind of saving process (one process, a training one, a compiled model, torchrun's
ranks) is made under spawn too, and its tensors must equal the zygote's save."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest

from harness.core.axes import Layout, Wrapper
from harness.core.cell import Cell, SaveKey
from harness.core.jobs import Job, JobRun
from harness.core.matrix import expand
from harness.core.oracle import save_error
from harness.core.results import CellResult, ResultsWriter
from harness.core.scenarios import default_scenarios_dir, load_scenarios
from harness.core.zoo import MODELS
from harness.launchers import Launcher, make_launcher
from harness.plugin import run_once
from harness.run.artifacts import ArtifactStore, SavedArtifact
from harness.run.jobs import worker_env
from harness.run.runner import CellRunner, run_cells

from .covers import AXES, cheapest_cover, values

# What a launcher can change is the process a job runs in: its environment, imports (torch.compile
# in a forked child), RNG state (the resume recipes restore RNG states) and, for distributed
# layouts, its ranks. map_location policies, serializations, training regimes and models are
# torch.load's and the recipes' business, not the launcher's, and the conformance matrix runs all
# of them under the default launcher against the oracle. So each recipe, format and wrapper is
# compared on its cheapest cell under spawn, where every job is a fresh interpreter and every
# distributed job a torchrun agent and its ranks; a spawned torchvision model alone costs seconds
# of torchvision's import.


def spawned_s(layout: Layout, world: int, wrapper: Wrapper) -> float:
    """What one job costs under spawn, as weights: an interpreter that imports torch, for a
    distributed job torchrun's agent and one per rank, and torch.compile."""
    seconds = 3.0 + 1.9 * world if layout.distributed else 1.6
    return seconds + (2.0 if wrapper is Wrapper.COMPILE else 0.0)


def shared_s(layout: Layout, world: int, wrapper: Wrapper) -> float:
    """A save of the matrix's, made once per run whatever this test chooses: it weighs only
    between loads that cost the same (the cheaper save, should spawn make it too)."""
    return spawned_s(layout, world, wrapper) / 100


def preference(cell: Cell) -> tuple[bool, bool, str]:
    """Among cells that cost the same: a model whose save is not refused (a refused save leaves
    no load to compare), then a model that draws random numbers for the recipes that train (the
    RNG states they restore are a process's), the trap net for the others."""
    declared = MODELS[cell.model].declared
    refused = declared is not None and save_error(cell, declared) is not None
    if cell.training:
        return refused, not (declared is not None and declared.stochastic), cell.id
    return refused, cell.model != "trap", cell.id


def reshards(cell: Cell) -> bool:
    """Distributed on both sides, at different world sizes."""
    return (
        cell.save_layout.distributed
        and cell.load_layout.distributed
        and cell.save_world != cell.load_world
    )


# every recipe and format, each wrapper where the model is saved (torch.compile compiles in the
# saver's forward), and a reshard across world sizes (and a cell that is none)
LAUNCHER_AXES = {**AXES, "save wrapper": lambda cell: cell.save_wrapper, "reshards": reshards}


def saving_process(key: SaveKey) -> str:
    """What a launcher shapes in a save: torchrun's ranks, the RNG states of a training, a
    compiled model's first forward, or one process that builds a model and saves it."""
    if key.layout.distributed:
        return "ranks"
    if key.training:
        return "training"
    if key.wrapper is Wrapper.COMPILE:
        return "compile"
    return "one process"


def save_s(key: SaveKey) -> float:
    return spawned_s(key.layout, key.world, key.wrapper)


@dataclass(frozen=True)
class Plan:
    cells: list[Cell]
    spawn_saves: frozenset[SaveKey]  # made under spawn too; the others' files are shared

    def spawn_s(self) -> float:
        loads = sum(spawned_s(c.load_layout, c.load_world, c.load_wrapper) for c in self.cells)
        return loads + sum(map(save_s, self.spawn_saves))


HALVES = ("half1", "half2")


@cache
def halves() -> dict[str, Plan]:
    """The cover in two halves of about the same cost under spawn, one per test, so that
    pytest-xdist runs them side by side; the cells that load one save stay together."""
    matrix = expand(load_scenarios(default_scenarios_dir()), subsets=[])
    cells = [cell for cell in matrix.cells if not MODELS[cell.model].large]
    cover = cheapest_cover(cells, LAUNCHER_AXES, spawned_s, shared_s, preference)
    groups: dict[SaveKey, list[Cell]] = defaultdict(list)
    for cell in cover:
        groups[cell.save_key].append(cell)
    by_process: dict[str, list[SaveKey]] = defaultdict(list)
    for key in groups:
        by_process[saving_process(key)].append(key)
    spawn_saves = {min(keys, key=lambda key: (save_s(key), key.id)) for keys in by_process.values()}
    plans = {key: Plan(group, frozenset({key} & spawn_saves)) for key, group in groups.items()}
    split: dict[str, Plan] = {half: Plan([], frozenset()) for half in HALVES}
    # the dearest group first, each to the cheaper half
    for _, plan in sorted(plans.items(), key=lambda item: (-item[1].spawn_s(), item[0].id)):
        half = min(HALVES, key=lambda name: (split[name].spawn_s(), name))
        split[half] = Plan(
            split[half].cells + plan.cells, split[half].spawn_saves | plan.spawn_saves
        )
    return split


@dataclass
class Recording:
    """A launcher that keeps each job's report by job name."""

    inner: Launcher
    reports: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, job: Job) -> JobRun:
        run = self.inner.launch(job)
        with self._lock:
            self.reports[job.name] = run.report
        return run

    def stop_all(self) -> None:
        self.inner.stop_all()


class SomeOwnSaves(ArtifactStore):
    """The shared store's files, but for the keys this one saves itself."""

    def __init__(self, own: ArtifactStore, shared: ArtifactStore, keys: frozenset[SaveKey]):
        super().__init__(own.factory, own.launcher)
        self.shared, self.keys = shared, keys

    def get(self, key: SaveKey) -> SavedArtifact:
        return super().get(key) if key in self.keys else self.shared.get(key)


def run(runner: CellRunner, cells: list[Cell], name: str) -> dict[str, CellResult]:
    workdir = runner.factory.workdir
    with ResultsWriter(workdir / "results.jsonl", {"launcher": name}, resume=False) as out:
        results = run_cells(cells, runner, out, jobs=2)
    return {result.id: result for result in results}


def tensors(report: dict[str, Any] | None) -> dict[str, Any]:
    assert report is not None
    return {
        name: (tensor["digest"], tensor["device"], tensor["dtype"], tensor["shape"])
        for name, tensor in report.get("tensors", {}).items()
    }


def test_the_cover_has_every_recipe_format_and_wrapper_and_a_reshard() -> None:
    matrix = expand(load_scenarios(default_scenarios_dir()), subsets=[])
    cells = [cell for half in halves().values() for cell in half.cells]
    assert len({cell.id for cell in cells}) == len(cells)  # each cell in one half, once
    assert set().union(*(values(c, LAUNCHER_AXES) for c in cells)) == set().union(
        *(values(c, LAUNCHER_AXES) for c in matrix.cells)
    )
    assert {cell.save_wrapper for cell in cells} == set(Wrapper)
    assert any(map(reshards, cells))
    assert not any(MODELS[cell.model].large for cell in cells)
    # a save of each kind of saving process is made under spawn, once
    first, second = (half.spawn_saves for half in halves().values())
    assert not first & second
    assert {saving_process(key) for key in first | second} == {
        "ranks",
        "training",
        "compile",
        "one process",
    }


def load_report(runner: CellRunner, cell: Cell) -> dict[str, Any] | None:
    """The report of the cell's load (rank 0's), where the runner's jobs write it."""
    path = runner.factory.cell_folder(cell) / "load-report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@pytest.mark.slow
@pytest.mark.parametrize("half", HALVES)
def test_zygote_and_spawn_agree_on_every_kind_of_cell(
    tmp_path: Path, half: str, ckpt_runner: CellRunner, pytestconfig: pytest.Config
) -> None:
    if pytestconfig.getoption("ckpt_launcher") != "zygote":
        pytest.skip("compares the zygote with spawn: the matrix's runner is not the zygote's")
    plan = halves()[half]
    # the conformance matrix's own cells on its zygote, each run once in this pytest run:
    # by this test or by the matrix's, whichever asks first (run_once)
    with ThreadPoolExecutor(max_workers=2) as pool:
        forked = {r.id: r for r in pool.map(partial(run_once, ckpt_runner), plan.cells)}
    forked_reports = {cell.id: load_report(ckpt_runner, cell) for cell in plan.cells}
    spawn_factory = replace(ckpt_runner.factory, workdir=tmp_path / "spawn")
    spawned_jobs = Recording(make_launcher("spawn", tmp_path / "spawn", worker_env(())))
    own = ArtifactStore(spawn_factory, spawned_jobs)
    spawn = replace(
        ckpt_runner,
        factory=spawn_factory,
        launcher=spawned_jobs,
        store=SomeOwnSaves(own, ckpt_runner.store, plan.spawn_saves),
    )
    try:
        spawned = run(spawn, plan.cells, "spawn")
    finally:
        spawned_jobs.stop_all()
    assert forked.keys() == spawned.keys() == {cell.id for cell in plan.cells}
    for cell in plan.cells:
        a, b = forked[cell.id], spawned[cell.id]
        assert a.outcome == b.outcome, f"{cell.id}: {a.describe()}\n{b.describe()}"
        observed_a, observed_b = a.observed or {}, b.observed or {}
        for key in ("status", "error_class", "exception_type", "message", "devices", "detail"):
            assert observed_a.get(key) == observed_b.get(key), f"{cell.id}: {key}"
        assert tensors(forked_reports[cell.id]) == tensors(spawned_jobs.reports[cell.id])
    for saved in plan.spawn_saves:  # saved by both launchers: the same tensors
        shared = ckpt_runner.store.get(saved)
        assert shared.ok, shared.failure
        assert tensors(shared.report) == tensors(spawned_jobs.reports[saved.id]), saved.id
    # the comparison compared something: loads with tensors and loads that raised
    statuses = {(r.observed or {}).get("status") for r in forked.values()}
    assert {"loaded", "raised"} <= statuses
