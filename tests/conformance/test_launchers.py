"""The zygote (the default launcher) and spawn give the same results: at least one cell of every
recipe and format runs under both,
and a distributed cell from 1 rank to 2 (torchrun's ranks against forked ones), and each cell
must agree on outcome, error class, message, every tensor digest and every device."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.core.cell import Cell
from harness.core.jobs import Job, JobRun
from harness.core.matrix import expand
from harness.core.oracle import parse_torch_version
from harness.core.results import CellResult, ResultsWriter
from harness.core.scenarios import default_scenarios_dir, load_scenarios
from harness.launchers import Launcher, make_launcher
from harness.run.artifacts import ArtifactStore
from harness.run.environment import torch_environment
from harness.run.jobs import JobFactory, worker_env
from harness.run.runner import CellRunner, run_cells

# What a launcher can change is the process a job runs in: its environment, imports, RNG state
# (the resume recipes restore RNG states) and, for distributed layouts, its ranks. map_location
# policies, serializations, training regimes and models are torch.load's and the recipes'
# business, not the launcher's, and the conformance matrix runs all of them under the default
# launcher against the oracle; a spawned resnet worker alone costs seconds of torchvision import.
AXES = ("recipe", "format")


def covering(cells: tuple[Cell, ...]) -> list[Cell]:
    """The first cell that brings a value of some axis not yet covered, in matrix order."""
    seen: set[tuple[str, str]] = set()
    chosen = []
    for cell in cells:
        values = {(axis, str(getattr(cell, axis))) for axis in AXES}
        if not values <= seen:
            chosen.append(cell)
            seen |= values
    return chosen


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


def run_under(
    launcher: str, cells: list[Cell], workdir: Path, torch: str
) -> tuple[dict[str, CellResult], Recording]:
    factory = JobFactory(workdir=workdir)
    recording = Recording(make_launcher(launcher, workdir, worker_env(())))
    runner = CellRunner(
        factory=factory,
        launcher=recording,
        store=ArtifactStore(factory, recording),
        torch_version=parse_torch_version(torch),
    )
    with ResultsWriter(workdir / "results.jsonl", {"launcher": launcher}, resume=False) as out:
        try:
            results = run_cells(cells, runner, out, jobs=2)
        finally:
            recording.stop_all()
    return {result.id: result for result in results}, recording


def tensors(report: dict[str, Any] | None) -> dict[str, Any]:
    assert report is not None
    return {
        name: (tensor["digest"], tensor["device"], tensor["dtype"], tensor["shape"])
        for name, tensor in report.get("tensors", {}).items()
    }


@pytest.mark.slow
def test_zygote_and_spawn_agree_on_every_kind_of_cell(tmp_path: Path) -> None:
    matrix = expand(load_scenarios(default_scenarios_dir()), subsets=[])
    # (it loads the checkpoint the cover's fsdp2x1 cell saves: no save of its own)
    uneven = "model=trap-save=fsdp2x1[cpu]-load=fsdp2x2[cpu]-fmt=dcp-recipe=dcp_reshard"
    # and a distributed cell across world sizes: torchrun's ranks against forked ones
    cells = covering(matrix.cells) + [cell for cell in matrix.cells if cell.id == uneven]
    assert cells[-1].id == uneven
    for axis in AXES:  # the cover is complete
        assert {str(getattr(c, axis)) for c in cells} == {
            str(getattr(c, axis)) for c in matrix.cells
        }
    torch = torch_environment()["torch"]
    forked, forked_jobs = run_under("zygote", cells, tmp_path / "zygote", torch)
    spawned, spawned_jobs = run_under("spawn", cells, tmp_path / "spawn", torch)
    assert forked.keys() == spawned.keys() == {cell.id for cell in cells}
    for cell in cells:
        a, b = forked[cell.id], spawned[cell.id]
        assert a.outcome == b.outcome, f"{cell.id}: {a.describe()}\n{b.describe()}"
        observed_a, observed_b = a.observed or {}, b.observed or {}
        for key in ("status", "error_class", "exception_type", "message", "devices", "detail"):
            assert observed_a.get(key) == observed_b.get(key), f"{cell.id}: {key}"
        assert tensors(forked_jobs.reports[cell.id]) == tensors(spawned_jobs.reports[cell.id])
        save = cell.save_key.id
        assert tensors(forked_jobs.reports[save]) == tensors(spawned_jobs.reports[save])
    # the comparison compared something: loads with tensors and loads that raised
    statuses = {(r.observed or {}).get("status") for r in forked.values()}
    assert {"loaded", "raised"} <= statuses
