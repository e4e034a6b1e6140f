"""The one run use case: validated options to a finished results file.

``execute(work, options, destination)`` is the whole run, for every front door and every kind of
work: hold a work folder, catch Ctrl-C and SIGTERM, open the launcher, read the environment
(the results file's first line), check a resumed file against it, run the tasks through the cell
loop (each result appended and fsynced as it ends, progress shown), end the file with a line
saying how the run ended (finished, interrupted, or stopped by a broken launcher), stop every
worker, and hand back what the file holds. ``MatrixWork`` is the matrix's cells; a team's own
files are ``harness.certify.golden``'s work. The pytest plugin, which runs each cell as a test,
takes ``MatrixWork``'s launcher, environment and runner.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from harness.core.axes import Wrapper
from harness.core.cell import Cell
from harness.core.devices import DeviceMap
from harness.core.oracle import parse_torch_version
from harness.core.outcomes import exit_code
from harness.core.results import CellResult, ResultsFile, ResultsWriter, read_results
from harness.core.shards import shard_record
from harness.core.zoo import ModelError, ModelTraits, is_import_path
from harness.launchers import Launcher, LauncherBroken
from harness.launchers.zygote import PRELOAD_MODELS
from harness.run.environment import describe, now, torch_environment
from harness.run.options import OptionError, RunOptions
from harness.run.planning import Planned
from harness.run.progress import reporter_for
from harness.run.runner import (
    CellRunner,
    Task,
    build_runner,
    cell_tasks,
    leased_launcher,
    run_tasks,
)
from harness.run.signals import Interrupted, stop_on_signals
from harness.run.workdirs import work_folder


@dataclass(frozen=True, kw_only=True)
class Destination:
    """Where the results go, and what to do with a file already there."""

    out: Path
    resume: bool = False  # continue the file (the matrix only)
    overwrite: bool = False
    workdir: Path | None = None  # keep checkpoints, specs and logs here; None: a temporary one
    workdir_prefix: str = "ckpt-matrix-"
    # load the checkpoints an earlier run saved in the workdir instead of saving again
    keep_saves: bool = False
    resumable: bool = True  # whether --resume is an option of this command (for the message)

    def check(self) -> None:
        if self.keep_saves and self.workdir is None:
            raise OptionError(
                "--keep-saves loads the checkpoints an earlier run left in its --workdir; give "
                "that run's --workdir too"
            )
        if self.out.exists() and not (self.resume or self.overwrite):
            also = "--resume to continue it or " if self.resumable else ""
            raise OptionError(f"{self.out} exists; pass {also}--overwrite to replace it")


class Work(Protocol):
    """What a run runs: the matrix's cells (``MatrixWork``) or a team's files (golden)."""

    def open_launcher(self, workdir: Path) -> Launcher: ...

    def environment(self, launcher: Launcher, workdir: Path) -> dict[str, Any]: ...

    def check_resume(self, previous: ResultsFile, environment: Mapping[str, Any]) -> None: ...

    def tasks(
        self, launcher: Launcher, workdir: Path, environment: Mapping[str, Any], done: set[str]
    ) -> list[Task]: ...

    def announce(self, environment: Mapping[str, Any], tasks: int, done: int) -> str: ...


@dataclass(frozen=True, kw_only=True)
class Finished:
    out: Path
    results: tuple[CellResult, ...]  # everything the file holds (a resumed run's earlier cells too)
    ran: int  # tasks this run ran
    startup_s: float  # work folder, launcher, environment
    cells_s: float  # the cell loop

    @property
    def exit_code(self) -> int:
        return exit_code([result.outcome for result in self.results])


def execute(
    work: Work, options: RunOptions, destination: Destination, *, stream: TextIO | None = None
) -> Finished:
    """Run ``work`` to a finished results file at ``destination.out``; progress and the opening
    line go to ``stream`` (stderr). Raises ``UserError`` for bad input, ``Interrupted`` for a
    signal and ``LauncherBroken`` for a launcher that can run no more jobs; in each case what
    finished is in the file, which says how the run ended."""
    stream = sys.stderr if stream is None else stream
    options.check()
    destination.check()
    started = time.monotonic()
    # the signals are caught over the cleanup too: a second Ctrl-C cannot cut it short
    with (
        stop_on_signals(),
        work_folder(
            destination.workdir,
            prefix=destination.workdir_prefix,
            keep=("artifacts",) if destination.keep_saves else (),
        ) as workdir,
    ):
        launcher = work.open_launcher(workdir)
        try:
            environment = work.environment(launcher, workdir)
            resume = destination.resume and destination.out.exists()
            done: set[str] = set()
            if resume:
                previous = read_results(destination.out)
                work.check_resume(previous, environment)
                done = {result.id for result in previous.results}
            tasks = work.tasks(launcher, workdir, environment, done)
            print(work.announce(environment, len(tasks), len(done)), file=stream)
            loop_started = time.monotonic()
            run_loop(tasks, destination.out, environment, options, launcher, resume, stream)
            cells_s = time.monotonic() - loop_started
        finally:
            launcher.stop_all()
    return Finished(
        out=destination.out,
        results=tuple(read_results(destination.out).results),
        ran=len(tasks),
        startup_s=loop_started - started,
        cells_s=cells_s,
    )


def run_loop(
    tasks: list[Task],
    out: Path,
    environment: Mapping[str, Any],
    options: RunOptions,
    launcher: Launcher,
    resume: bool,
    stream: TextIO,
) -> None:
    """The results file around the cell loop: written as cells end, and ended with a line that
    says how the run ended."""
    reporter = reporter_for(stream)
    with ResultsWriter(out, dict(environment), resume=resume) as writer:
        reporter.start(len(tasks))
        try:
            run_tasks(
                tasks,
                writer,
                jobs=options.jobs,
                progress=reporter.update,
                on_stop=launcher.stop_all,
            )
        except LauncherBroken as exc:
            writer.finish(finished_at=now(), cells_run=writer.appended, stopped=str(exc))
            raise
        except Interrupted as exc:
            writer.finish(
                finished_at=now(),
                cells_run=writer.appended,
                stopped=f"interrupted by {exc}",
                interrupted=str(exc),
            )
            raise
        finally:
            reporter.stop()
        writer.finish(finished_at=now(), cells_run=len(tasks))


def _traits(models: Any) -> dict[str, Any]:
    """Each model's measured traits, as an environment line records them (anything else in a
    hand-edited file reads as itself, and so differs)."""
    if not isinstance(models, dict):
        return {"(recorded)": models}
    return {
        name: found.get("traits") if isinstance(found, dict) else found
        for name, found in models.items()
    }


def shard_identity(record: dict[str, Any] | None) -> str:
    """Which part of which matrix a results file holds, whatever named the shard."""
    if not record:
        return "none (the whole matrix)"
    if not isinstance(record, dict):
        return repr(record)
    return f"{record.get('index')}/{record.get('count')} of matrix {record.get('matrix')}"


@dataclass(frozen=True, kw_only=True)
class MatrixWork:
    """The planned cells of the matrix, as a run's work."""

    planned: Planned
    options: RunOptions
    out: Path | None = None  # named in the opening line and in a resume's errors
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    # wraps the launcher the cells' jobs run on (a benchmark records them); not the environment's
    record: Callable[[Launcher], Launcher] | None = None

    def open_launcher(self, workdir: Path) -> Launcher:
        """The run's launcher, behind its GPU leases; the zygote preloads torchvision and the
        distributed modules only where a planned cell needs them, and the modules of the user's
        models the cells name (unless ``CKPT_MATRIX_PRELOAD_MODELS=0``)."""
        cells = self.planned.cells
        return leased_launcher(
            self.options.launcher,
            workdir,
            gpu_slots=self.options.gpu_slots,
            preload_torchvision=any(cell.model_spec.needs_torchvision for cell in cells),
            # the distributed modules and torch._dynamo (fully_shard and torch.compile import
            # it, and so does the first torch.optim optimizer of a training cell's worker)
            preload_distributed=any(
                cell.save_layout.distributed
                or cell.load_layout.distributed
                or Wrapper.COMPILE in (cell.save_wrapper, cell.load_wrapper)
                or bool(cell.training)
                for cell in cells
            ),
            preload_modules=user_modules(cells, self.environ),
        )

    def environment(self, launcher: Launcher, workdir: Path) -> dict[str, Any]:
        """The results file's environment line: torch's side (read by one of the run's own
        workers, which sees the run's GPUs) with each model's traits measured there, the
        machine, and the run's choices (visibility, launcher, GPU slots, shard). A model that
        cannot be imported or built is a ``ModelError`` here, before any cell runs."""
        planned, options = self.planned, self.options
        torch_side = torch_environment(
            planned.inventory,
            launcher=launcher,
            workdir=workdir,
            models=sorted({cell.model for cell in planned.cells}),
            timeout_s=options.timeout_s,
        )
        failures = [found["error"] for found in torch_side["models"].values() if "error" in found]
        if failures:
            raise ModelError("; ".join(failures))
        shard = planned.shard
        return describe(
            torch_side,
            planned.inventory,
            visibility_policy=options.visibility,
            gpu_slots=options.gpu_slots,
            launcher=options.launcher,
            shard=None if shard is None else shard_record(shard, planned.matrix.cells),
        )

    def check_resume(self, previous: ResultsFile, environment: Mapping[str, Any]) -> None:
        """A resumed file must hold the same torch, shard and model traits (the oracle judged
        its cells by them), and only cells this run plans: a resume may add cells (a file of
        ``-k fsdp2`` grown to the whole matrix), never mix in others (another ``-k``,
        ``--visibility`` or ``--min-gpus``)."""
        planned = {cell.id for cell in self.planned.cells}
        strays = [r.id for r in previous.results if r.id not in planned]
        if strays:
            raise OptionError(
                f"{previous.path} holds {len(strays)} cell(s) this run does not plan (first "
                f"{strays[0]}); resume it with the options it was run with (-k, --visibility, "
                "--min-gpus, --model, --scenarios), or use a new --out for this run"
            )
        before = previous.environment
        for what, then, this in (
            ("torch", before.get("torch"), environment["torch"]),
            ("shard", shard_identity(before.get("shard")), shard_identity(environment["shard"])),
            ("model traits", _traits(before.get("models")), _traits(environment.get("models"))),
        ):
            if then != this:
                raise OptionError(
                    f"{previous.path} was written with {what} {then}, this run has {this}; "
                    "use a new --out for this run"
                )

    def runner(
        self, launcher: Launcher, workdir: Path, environment: Mapping[str, Any]
    ) -> CellRunner:
        """The runner of the planned cells, on ``launcher`` (from ``open_launcher``)."""
        return build_runner(
            workdir=workdir,
            timeout_s=self.options.timeout_s,
            devices=DeviceMap(self.planned.inventory.uuids),
            torch_version=parse_torch_version(environment["torch"]),
            launcher=launcher if self.record is None else self.record(launcher),
            torchvision=environment.get("torchvision") is not None,
            traits={
                name: ModelTraits.from_json(found["traits"])
                for name, found in (environment.get("models") or {}).items()
            },
        )

    def tasks(
        self, launcher: Launcher, workdir: Path, environment: Mapping[str, Any], done: set[str]
    ) -> list[Task]:
        cells = [cell for cell in self.planned.cells if cell.id not in done]
        runner = self.runner(launcher, workdir, environment)
        return cell_tasks(cells, runner, rerun_errors=self.options.rerun_errors)

    def announce(self, environment: Mapping[str, Any], tasks: int, done: int) -> str:
        shard = self.planned.shard
        part = "" if shard is None else f" (shard {shard.label})"
        return (
            f"ckpt-matrix: {tasks} cells to run{part} ({done} already in {self.out}), "
            f"torch {environment['torch']}, {self.options.jobs} at a time, "
            f"{self.options.launcher} launcher"
        )


def user_modules(
    cells: tuple[Cell, ...] | list[Cell], environ: Mapping[str, str]
) -> tuple[str, ...]:
    """The modules of the user's models (``package.module`` of ``package.module:factory``) that
    the zygote imports once for all its children; none where ``CKPT_MATRIX_PRELOAD_MODELS`` is
    ``0`` (each worker imports them, as under the spawn launcher)."""
    value = environ.get(PRELOAD_MODELS, "1")
    if value not in ("0", "1"):
        raise OptionError(
            f"environment variable {PRELOAD_MODELS}={value!r}: expected 1 (the zygote imports "
            "your model's module once, the default) or 0 (each worker imports it)"
        )
    if value == "0":
        return ()
    names = (cell.model for cell in cells if is_import_path(cell.model))
    return tuple(sorted({name.partition(":")[0] for name in names}))
