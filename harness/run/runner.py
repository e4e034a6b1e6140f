"""Running cells: save (once per artifact), load, judge, record, report progress.

``run_cell`` is the one place that maps everything that can happen to a cell to a result; a
harness bug in one cell becomes that cell's ERROR, and ``KeyboardInterrupt`` is always re-raised.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.core.cell import Cell
from harness.core.devices import DeviceMap
from harness.core.oracle import Expectation, TorchVersion, expect
from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsWriter
from harness.core.verdict import judge
from harness.core.zoo import ModelTraits
from harness.launchers import DEFAULT_LAUNCHER, Launcher, LauncherBroken, make_launcher
from harness.launchers.leases import GpuLeases, LeasedLauncher
from harness.run.artifacts import ArtifactStore
from harness.run.jobs import JobFactory, worker_env

Progress = Callable[[CellResult, int, int], None]


@dataclass
class CellRunner:
    factory: JobFactory
    launcher: Launcher
    store: ArtifactStore
    torch_version: TorchVersion
    torchvision: bool = True  # whether the workers' interpreter has torchvision
    # each model's traits as measured in a worker (default: the zoo's declared ones)
    traits: Mapping[str, ModelTraits] = field(default_factory=dict)

    def for_attempt(self, attempt: int) -> CellRunner:
        """This runner for a rerun: fresh processes, and a fresh save too (the save may be what
        failed), in a folder of the attempt's own."""
        factory = replace(self.factory, workdir=self.factory.workdir / f"rerun-{attempt}")
        return replace(self, factory=factory, store=ArtifactStore(factory, self.launcher))

    def run_with_reruns(self, cell: Cell, reruns: int) -> CellResult:
        """Run the cell; while it ends ERROR, run it again, up to ``reruns`` more times. The
        result is the last attempt's, with every earlier one recorded."""
        result = self.run_cell(cell)
        attempts: list[dict[str, Any]] = []
        while result.outcome is Outcome.ERROR and len(attempts) < reruns:
            attempts.append(result.attempt())
            result = self.for_attempt(len(attempts)).run_cell(cell)
        return replace(result, attempts=tuple(attempts)) if attempts else result

    def run_cell(self, cell: Cell) -> CellResult:
        started = time.monotonic()
        traits = self.traits.get(cell.model)
        expectation = expect(cell, torch_version=self.torch_version, traits=traits)
        skipped = skip_reason(cell, traits, torchvision=self.torchvision)
        if skipped is not None:
            return CellResult(
                cell=cell,
                outcome=Outcome.SKIP,
                expected=expectation,
                reason=skipped,
                observed=None,
                error=None,
                duration_s=0.0,
            )
        try:
            return self._run(cell, expectation, started)
        except (KeyboardInterrupt, SystemExit, LauncherBroken):
            raise
        except Exception as exc:
            return CellResult(
                cell=cell,
                outcome=Outcome.ERROR,
                expected=expectation,
                reason=f"{cell.id}: the harness failed: {type(exc).__name__}: {exc}",
                observed=None,
                error={"phase": "harness", "failure": traceback.format_exc()[-3000:]},
                duration_s=time.monotonic() - started,
            )

    def _run(self, cell: Cell, expectation: Expectation, started: float) -> CellResult:
        artifact = self.store.get(cell.save_key)
        if artifact.ok and artifact.report is not None and artifact.report["status"] == "saved":
            load = self.launcher.launch(
                self.factory.load_job(
                    cell, artifact_path=artifact.path, sha256=artifact.report["sha256"]
                )
            )
        else:
            load = None
        judgement = judge(
            cell,
            expectation,
            save_report=artifact.report,
            save_failure=artifact.failure,
            load=load,
            orchestrator_pid=os.getpid(),
            devices=self.factory.devices,
        )
        return CellResult(
            cell=cell,
            outcome=judgement.outcome,
            expected=expectation,
            reason=judgement.reason,
            observed=judgement.observed,
            error=judgement.error,
            duration_s=time.monotonic() - started,
        )


def skip_reason(cell: Cell, traits: ModelTraits | None, *, torchvision: bool) -> str | None:
    """Why this run cannot perform the cell, or None."""
    if cell.model_spec.needs_torchvision and not torchvision:
        return (
            f"{cell.model} needs torchvision, which the workers' interpreter lacks "
            "(pip install torchvision beside torch, or leave the model out with -k)"
        )
    if traits is not None and traits.unavailable:
        return traits.unavailable
    if traits is not None and not traits.example_input and cell.training:
        return (
            f"{cell.model} gives no example_input, and a training-state cell trains the model "
            "(give package.module:example_input(device) -> Tensor)"
        )
    return None


def build_runner(
    *,
    workdir: Path,
    timeout_s: float,
    devices: DeviceMap,
    torch_version: TorchVersion,
    gpu_slots: int = 1,
    launcher: str | Launcher = DEFAULT_LAUNCHER,
    torchvision: bool = True,
    preload_torchvision: bool = True,
    preload_distributed: bool = False,
    traits: Mapping[str, ModelTraits] | None = None,
) -> CellRunner:
    """The runner both front doors use: workers forked from a zygote that has imported torch
    (``zygote``, the default) or fresh interpreters (``spawn``), GPU leases in the work folder
    (shared by threads and by pytest-xdist workers; ``gpu_slots`` jobs per GPU at once),
    artifacts saved once. ``launcher``: a name, or a launcher made by ``leased_launcher``
    (the front doors make it first and read the environment through it).
    ``preload_torchvision``: some cell's model needs torchvision (the zygote imports it up
    front). Call ``runner.launcher.stop_all()`` when done (it ends a zygote)."""
    factory = JobFactory(workdir=workdir, timeout_s=timeout_s, devices=devices)
    if isinstance(launcher, str):
        launcher = leased_launcher(
            launcher,
            workdir,
            gpu_slots=gpu_slots,
            preload_torchvision=preload_torchvision and torchvision,
            preload_distributed=preload_distributed,
        )
    return CellRunner(
        factory=factory,
        launcher=launcher,
        store=ArtifactStore(factory, launcher),
        torch_version=torch_version,
        torchvision=torchvision,
        traits=dict(traits or {}),
    )


def leased_launcher(
    name: str,
    workdir: Path,
    *,
    gpu_slots: int = 1,
    preload_torchvision: bool = True,
    preload_distributed: bool = False,
    preload_modules: Sequence[str] = (),
) -> Launcher:
    """The launcher called ``name`` behind the GPU leases of the work folder (shared by threads
    and by pytest-xdist workers; ``gpu_slots`` jobs per GPU at once)."""
    inner = make_launcher(
        name,
        workdir,
        worker_env(()),
        preload_torchvision=preload_torchvision,
        preload_distributed=preload_distributed,
        preload_modules=preload_modules,
    )
    return LeasedLauncher(inner, GpuLeases(workdir / "leases", slots=gpu_slots))


def interleave_by_artifact(cells: Sequence[Cell]) -> list[Cell]:
    """The first cell of every artifact, then the second of every artifact, and so on: parallel
    threads then start different saves instead of queueing behind one artifact's lock."""
    seen: dict[str, int] = {}
    ranked = []
    for position, cell in enumerate(cells):
        key = cell.save_key.id
        ranked.append((seen.get(key, 0), position, cell))
        seen[key] = seen.get(key, 0) + 1
    return [cell for _, _, cell in sorted(ranked, key=lambda item: item[:2])]


Task = Callable[[], CellResult]


def run_tasks(
    tasks: Sequence[Task],
    writer: ResultsWriter,
    *,
    jobs: int,
    progress: Progress | None = None,
    on_stop: Callable[[], None] | None = None,
) -> list[CellResult]:
    """The cell loop, for matrix cells and golden files alike: ``jobs`` tasks at a time, each
    result recorded (appended and fsynced) as soon as its task ends. Whatever stops the loop
    (a signal, a broken launcher) cancels what has not started and calls ``on_stop`` (the
    launcher's ``stop_all``) before it propagates."""
    results: list[CellResult] = []
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="cell")
    try:
        futures = [pool.submit(task) for task in tasks]
        for future in as_completed(futures):
            result = future.result()
            writer.append(result)
            results.append(result)
            if progress is not None:
                progress(result, len(results), len(tasks))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        if on_stop is not None:
            on_stop()
        raise
    pool.shutdown()
    return results


def cell_tasks(cells: Sequence[Cell], runner: CellRunner, *, rerun_errors: int = 0) -> list[Task]:
    """One task per cell, interleaved by artifact (see ``interleave_by_artifact``); a cell that
    ends ERROR runs again up to ``rerun_errors`` more times."""
    return [
        functools.partial(runner.run_with_reruns, cell, rerun_errors)
        for cell in interleave_by_artifact(cells)
    ]


def run_cells(
    cells: Sequence[Cell],
    runner: CellRunner,
    writer: ResultsWriter,
    *,
    jobs: int,
    progress: Progress | None = None,
    rerun_errors: int = 0,
) -> list[CellResult]:
    """Run cells through the cell loop; the results in the order of ``cells``."""
    tasks = cell_tasks(cells, runner, rerun_errors=rerun_errors)
    done = run_tasks(tasks, writer, jobs=jobs, progress=progress, on_stop=runner.launcher.stop_all)
    by_id = {result.id: result for result in done}
    return [by_id[cell.id] for cell in cells]
