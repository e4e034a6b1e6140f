"""The ``ckpt-matrix`` command: ``run``, ``list``, ``inventory``, ``report``, ``diff``, ``merge``,
``inspect``, ``golden``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.certify.diff import compare
from harness.certify.diff import to_markdown as diff_markdown
from harness.certify.report import report_html, report_markdown
from harness.core.errors import UserError
from harness.core.outcomes import exit_code
from harness.core.results import ResultsWriter, read_results
from harness.core.results import merge as merge_results
from harness.core.summary import summary_table
from harness.inspect.pickles import runs_code
from harness.launchers import DEFAULT_LAUNCHER, LAUNCHERS, Launcher, LauncherBroken
from harness.run.environment import describe, now, torch_environment
from harness.run.jobs import DEFAULT_TIMEOUT_S, JobFactory
from harness.run.options import (
    Planned,
    RunOptions,
    machine_inventory,
    open_launcher,
    open_runner,
    plan_matrix,
    run_environment,
)
from harness.run.progress import reporter_for
from harness.run.runner import leased_launcher, run_cells
from harness.run.workdirs import work_folder

USAGE_ERROR = 2
STOPPED = 3  # the run could not go on (a launcher broke); what finished is recorded
INTERNAL_ERROR = 70  # a bug in the harness (EX_SOFTWARE): its traceback is printed
BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the reader of stdout went away, as for `seq | head`


class Interrupted(BaseException):
    """The run was told to stop (SIGINT or SIGTERM): running workers are stopped, the results
    file ends with a line saying so, and ``--resume`` finishes the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once: a
    second signal is ignored while the first one's cleanup stops the workers."""

    def interrupt(signum: int, _frame: object) -> None:
        for name in (signal.SIGINT, signal.SIGTERM):
            signal.signal(name, signal.SIG_IGN)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(name, interrupt) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)


def end_interrupted(writer: ResultsWriter, exc: Interrupted) -> None:
    """The results file's last line for a run a signal stopped: ``--resume`` finishes it."""
    writer.finish(
        finished_at=now(),
        cells_run=writer.appended,
        stopped=f"interrupted by {exc}",
        interrupted=str(exc),
    )


class UsageError(UserError):
    """Bad input from the command line; the message says what and how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckpt-matrix",
        description="Certify how PyTorch models survive save and load across device layouts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def matrix_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--scenarios",
            type=Path,
            default=None,
            help="a scenario TOML file or a folder of them (default: the shipped scenarios/)",
        )
        sub.add_argument(
            "-k", "--select", default=None, help="keep only cells whose id contains this text"
        )
        sub.add_argument(
            "--model",
            action="append",
            default=[],
            dest="models",
            metavar="NAME",
            help="run the scenarios with this model instead of the ones they name (repeatable): "
            "a zoo name, or your own as package.module:factory, imported from the current "
            "directory and PYTHONPATH",
        )
        sub.add_argument(
            "--visibility",
            default="minimal",
            help="GPU subsets: minimal, pairs, all[:K] or sample:N (default: minimal)",
        )
        sub.add_argument(
            "--shard",
            default=None,
            metavar="K/N",
            help="only the K-th of N disjoint parts of the matrix (cells sharing a checkpoint stay "
            "together); 'slurm' reads a Slurm array's task id and count, 'indexed:N' a Kubernetes "
            "Indexed Job's JOB_COMPLETION_INDEX with N completions",
        )

    def simulate_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--simulate-gpus",
            type=int,
            default=None,
            metavar="N",
            help="plan for N fake GPUs instead of this machine's (never GPU evidence)",
        )

    run = commands.add_parser("run", help="run the matrix and write results")
    matrix_options(run)
    run.add_argument("--out", type=Path, default=Path("results.jsonl"))
    run.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cells at a time")
    run.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per worker process"
    )
    run.add_argument(
        "--gpu-slots",
        type=int,
        default=1,
        metavar="N",
        help="worker processes that may share one GPU at once (default 1: each has it alone)",
    )
    run.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=DEFAULT_LAUNCHER,
        help="zygote (the default): workers forked from one process that has imported torch and "
        "never computes; spawn: a fresh interpreter per worker (slower, the same outcomes)",
    )
    run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep checkpoints, specs and worker logs here (default: a temporary folder)",
    )
    run.add_argument(
        "--rerun-errors",
        type=int,
        default=0,
        metavar="N",
        help="run a cell that ends ERROR again, in fresh processes with a fresh save, up to N "
        "more times; one that then passes is reported flaky, with every attempt recorded",
    )
    existing = run.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume", action="store_true", help="continue an interrupted --out file"
    )
    existing.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    listing = commands.add_parser("list", help="print the cells, one id per line")
    matrix_options(listing)
    listing.add_argument(
        "--explain",
        action="store_true",
        help="also print the combinations that are not cells, and why",
    )
    listing.add_argument(
        "--count", action="store_true", help="print the number of cells per visibility policy"
    )
    simulate_option(listing)

    diff = commands.add_parser(
        "diff", help="compare two results files: exit 0 certified, 1 regression, 2 unusable input"
    )
    diff.add_argument("baseline", type=Path)
    diff.add_argument("candidate", type=Path)
    diff.add_argument("--markdown", type=Path, default=None, help="also write the diff here")
    diff.add_argument(
        "--fail-on-flaky",
        action="store_true",
        help="a cell the candidate had to rerun (it ended ERROR, then otherwise) is a failure",
    )
    diff.add_argument(
        "--allow-missing",
        action="store_true",
        help="cells missing from the candidate, or skipped there, are not a regression (e.g. a "
        "torch without torchvision)",
    )

    merge = commands.add_parser("merge", help="merge results files of several runners into one")
    merge.add_argument("out", type=Path)
    merge.add_argument("inputs", type=Path, nargs="+")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing OUT")

    report = commands.add_parser("report", help="write Markdown and HTML reports of results")
    report.add_argument("results", type=Path)
    report.add_argument("--markdown", type=Path, default=None, help="default: RESULTS.md")
    report.add_argument("--html", type=Path, default=None, help="default: RESULTS.html")

    inspect = commands.add_parser(
        "inspect",
        help="look inside checkpoint files without running them: exit 0 intact, 1 needs globals "
        "a weights_only load refuses, 2 corrupt or unknown",
    )
    inspect.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="one JSON object per file")

    golden = commands.add_parser(
        "golden", help="certify your own checkpoint files: record them, then verify them later"
    )
    golden_commands = golden.add_subparsers(dest="golden_command", required=True)

    def golden_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="files at a time")
        sub.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per worker process"
        )
        sub.add_argument("--launcher", choices=LAUNCHERS, default=DEFAULT_LAUNCHER)
        sub.add_argument("--workdir", type=Path, default=None, help="keep worker specs and logs")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    record = golden_commands.add_parser(
        "record", help="load each file in a worker and record every tensor's digest"
    )
    record.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="files or folders")
    record.add_argument("--out", type=Path, default=Path("golden.jsonl"))
    record.add_argument(
        "--safe-global",
        action="append",
        default=[],
        dest="safe_globals",
        metavar="module.Name",
        help="a global the files need that a weights_only load refuses, and that you trust "
        "(repeatable); never one that runs code",
    )
    record.add_argument(
        "--map-location",
        default="auto",
        metavar="WHERE",
        help="where the tensors load: auto (default: where saved if this machine has every "
        "saved device, else cpu), cpu, cuda:K, or as-saved (never moved; a file saved from a "
        "GPU this machine lacks then fails to load); verify loads as the recording chose",
    )
    golden_options(record)
    verify = golden_commands.add_parser(
        "verify", help="load every recorded file again and compare bitwise (ordinary results)"
    )
    verify.add_argument("golden", type=Path, help="the file `golden record` wrote")
    verify.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: RECORDING-verify.jsonl beside the recording (RECORDING-verify-2.jsonl, "
        "... where that exists: an earlier verification is never replaced)",
    )
    golden_options(verify)

    inventory = commands.add_parser("inventory", help="print the GPUs, driver and CUDA versions")
    inventory.add_argument("--json", action="store_true", help="as JSON")
    simulate_option(inventory)
    return parser


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        scenarios=args.scenarios,
        select=args.select,
        models=tuple(args.models),
        visibility=args.visibility,
        shard=args.shard,
        timeout_s=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
        gpu_slots=getattr(args, "gpu_slots", 1),
        launcher=getattr(args, "launcher", DEFAULT_LAUNCHER),
        simulate_gpus=getattr(args, "simulate_gpus", None),
    )


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


def cmd_inventory(args: argparse.Namespace) -> int:
    inventory = machine_inventory(RunOptions(simulate_gpus=args.simulate_gpus), os.environ)
    print(json.dumps(inventory.to_json(), indent=1) if args.json else inventory.describe())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Each file's format, tensors, globals, defects and advice; the exit code is the worst
    file's. Nothing is unpickled for real and no code of the file's is imported."""
    from harness.inspect import inspect_path
    from harness.run.inventory import read_inventory

    gpus = len(read_inventory(os.environ).gpus)
    worst = 0
    for path in args.paths:
        found = inspect_path(path, gpus=gpus)
        worst = max(worst, found.exit_code)
        print(json.dumps(found.to_json(), sort_keys=True) if args.json else found.describe())
        for name in found.code_running:
            print(
                f"ckpt-matrix inspect: WARNING: {path} names {name}, which runs code or commands "
                "when unpickled: do not load it",
                file=sys.stderr,
            )
    return worst


def checked_safe_globals(names: Sequence[str], where: str) -> tuple[str, ...]:
    """Globals a user allows a golden load: ``module.Name`` each, and never one that runs code."""
    for name in names:
        if not isinstance(name, str) or "." not in name:
            raise UsageError(f"{where} {name!r}: give module.Name (e.g. argparse.Namespace)")
        if runs_code(name):
            raise UsageError(
                f"{where} {name}: that global runs code or commands; it is never allowed"
            )
    return tuple(names)


def cmd_golden(args: argparse.Namespace) -> int:
    """``golden record PATH...`` or ``golden verify GOLDEN``: one worker job per file, on the
    run's launcher, each line written as its file ends; the exit code reduces the outcomes."""
    from harness.certify.golden import golden_files, map_choice, recorded, verify_out

    if args.golden_command == "verify" and args.out is None:
        args.out = verify_out(args.golden)
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1")
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: must be more than 0 seconds")
    if args.out.exists() and not args.overwrite:
        raise UsageError(f"{args.out} exists; pass --overwrite to replace it")
    if args.golden_command == "record":
        map_choice(args.map_location)
        safe_globals = checked_safe_globals(args.safe_globals, "--safe-global")
        files = golden_files(args.paths)
        before: list[Any] = []
    else:
        golden = read_results(args.golden)
        before = recorded(golden)
        recorded_with = golden.environment.get("golden") or {}
        if not isinstance(recorded_with, dict):
            raise UsageError(f"{args.golden}:1: 'golden' is not what `golden record` writes")
        named = recorded_with.get("safe_globals") or []
        if not isinstance(named, list):
            raise UsageError(f"{args.golden}:1: golden.safe_globals is not a list")
        safe_globals = checked_safe_globals(named, f"{args.golden}:1 golden.safe_globals")
        files = []
    inventory = machine_inventory(RunOptions(), os.environ)
    with stop_on_signals(), work_folder(args.workdir, prefix="ckpt-matrix-golden-") as workdir:
        return golden_files_run(args, inventory, workdir, files, before, safe_globals)


def golden_files_run(
    args: argparse.Namespace,
    inventory: Any,
    workdir: Path,
    files: list[Path],
    before: list[Any],
    safe_globals: tuple[str, ...],
) -> int:
    """``golden``'s run: the environment, then one job per file, written as each ends."""
    from harness.certify.golden import GoldenRunner, run_files
    from harness.core.devices import DeviceMap

    launcher = leased_launcher(args.launcher, workdir, preload_torchvision=False)
    try:
        torch_side = torch_environment(
            inventory, launcher=launcher, workdir=workdir, timeout_s=args.timeout
        )
        environment = describe(
            torch_side, inventory, visibility_policy="all", launcher=args.launcher
        )
        environment["golden"] = {
            "command": args.golden_command,
            "safe_globals": list(safe_globals),
            "record": None if args.golden_command == "record" else str(args.golden),
        }
        if args.golden_command == "record":
            environment["golden"]["map_location"] = args.map_location
        runner = GoldenRunner(
            factory=JobFactory(
                workdir=workdir, timeout_s=args.timeout, devices=DeviceMap(inventory.uuids)
            ),
            launcher=launcher,
            visibility=inventory.indices,
            safe_globals=safe_globals,
            map_location=getattr(args, "map_location", "auto"),
        )
        work = (
            [lambda f=f: runner.record(str(f), f) for f in files]
            if args.golden_command == "record"
            else [lambda b=b: runner.verify(b, args.golden.parent) for b in before]
        )
        print(
            f"ckpt-matrix golden {args.golden_command}: {len(work)} files, torch "
            f"{environment['torch']}, {args.jobs} at a time",
            file=sys.stderr,
        )
        reporter = reporter_for(sys.stderr)
        with ResultsWriter(args.out, environment, resume=False) as writer:
            reporter.start(len(work))
            try:
                results = run_files(work, writer, jobs=args.jobs, progress=reporter.update)
            except Interrupted as exc:
                end_interrupted(writer, exc)
                raise
            finally:
                reporter.stop()
            writer.finish(finished_at=now(), cells_run=len(results))
    finally:
        launcher.stop_all()
    print(summary_table(results))
    print(f"\n{len(results)} files in {args.out}")
    return exit_code([result.outcome for result in results])


def cmd_list(args: argparse.Namespace) -> int:
    options = run_options(args)
    if args.count:
        inventory = machine_inventory(options, os.environ)
        gpus = len(inventory.gpus)
        print(f"# {gpus} GPU(s){' (simulated)' if inventory.simulated else ''}")
        for name in ("minimal", "pairs", "all:2", "all:3", "sample:8", "sample:32"):
            planned = plan_matrix(replace(options, visibility=name), inventory=inventory)
            print(f"{name:<10} {len(planned.subsets):>5} subsets {len(planned.cells):>7} cells")
        return 0
    planned = plan_matrix(options)
    for cell in planned.cells:
        print(cell.id)
    if args.explain:
        matrix = planned.matrix
        shard = (
            "" if planned.shard is None else f" (shard {planned.shard.label}: {len(planned.cells)})"
        )
        print(f"\n# {len(matrix.cells)} cells{shard}; {len(matrix.omitted)} combinations omitted:")
        for omitted in matrix.omitted:
            print(f"# {omitted.combination}\n#     {omitted.reason} [{omitted.scenario}]")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    result = compare(read_results(args.baseline), read_results(args.candidate))
    text = diff_markdown(result, allow_missing=args.allow_missing, fail_on_flaky=args.fail_on_flaky)
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    return result.exit_code(allow_missing=args.allow_missing, fail_on_flaky=args.fail_on_flaky)


def cmd_merge(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise UsageError(f"{args.out} exists; pass --overwrite to replace it")
    environment, cells = merge_results([read_results(path) for path in args.inputs])
    with ResultsWriter(args.out, environment, resume=False) as writer:
        for cell in cells:
            writer.append(cell)
    print(f"wrote {args.out}: {len(cells)} cells from {len(args.inputs)} files")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    results = read_results(args.results)
    for warning in results.warnings:
        print(f"ckpt-matrix report: warning: {warning}", file=sys.stderr)
    markdown = args.markdown or args.results.with_suffix(".md")
    html = args.html or args.results.with_suffix(".html")
    markdown.write_text(report_markdown(results), encoding="utf-8")
    html.write_text(report_html(results), encoding="utf-8")
    print(f"wrote {markdown} and {html} ({len(results.results)} cells)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    options = run_options(args)
    planned = plan_matrix(options)
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1")
    if args.rerun_errors < 0:
        raise UsageError(f"--rerun-errors {args.rerun_errors}: must be 0 or more")
    if args.out.exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"{args.out} exists; pass --resume to continue it or --overwrite to replace it"
        )
    # the signals are caught over the cleanup too: a second Ctrl-C cannot cut it short
    with stop_on_signals(), work_folder(args.workdir) as workdir:
        launcher = open_launcher(planned, options, workdir)
        try:
            return run_planned(args, options, planned, launcher, workdir)
        finally:
            launcher.stop_all()


def run_planned(
    args: argparse.Namespace,
    options: RunOptions,
    planned: Planned,
    launcher: Launcher,
    workdir: Path,
) -> int:
    done: set[str] = set()
    environment = run_environment(planned, options, launcher, workdir)
    if args.resume and args.out.exists():
        previous = read_results(args.out)
        before, now_ = previous.environment, environment
        for what, then, this in (
            ("torch", before.get("torch"), now_["torch"]),
            ("shard", shard_identity(before.get("shard")), shard_identity(now_["shard"])),
            # the oracle judged the earlier cells by these
            ("model traits", _traits(before.get("models")), _traits(now_.get("models"))),
        ):
            if then != this:
                raise UsageError(
                    f"{args.out} was written with {what} {then}, this run has {this}; "
                    "use a new --out for this run"
                )
        done = {result.id for result in previous.results}
    cells = [cell for cell in planned.cells if cell.id not in done]
    shard = "" if planned.shard is None else f" (shard {planned.shard.label})"
    print(
        f"ckpt-matrix: {len(cells)} cells to run{shard} ({len(done)} already in {args.out}), "
        f"torch {environment['torch']}, {args.jobs} at a time, {options.launcher} launcher",
        file=sys.stderr,
    )
    started = time.monotonic()
    runner = open_runner(planned, options, environment, workdir, launcher)
    resume = bool(args.resume and args.out.exists())
    reporter = reporter_for(sys.stderr)
    with ResultsWriter(args.out, environment, resume=resume) as writer:
        reporter.start(len(cells))
        try:
            run_cells(
                cells,
                runner,
                writer,
                jobs=args.jobs,
                progress=reporter.update,
                rerun_errors=args.rerun_errors,
            )
        except LauncherBroken as exc:
            writer.finish(finished_at=now(), cells_run=writer.appended, stopped=str(exc))
            raise
        except Interrupted as exc:
            end_interrupted(writer, exc)
            raise
        finally:
            reporter.stop()
        writer.finish(finished_at=now(), cells_run=len(cells))
    everything = read_results(args.out)
    print(summary_table(everything.results))
    print(
        f"\n{len(everything.results)} cells in {args.out}; this run took "
        f"{time.monotonic() - started:.1f} s for {len(cells)} cells"
    )
    return exit_code([result.outcome for result in everything.results])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "list": cmd_list,
        "inventory": cmd_inventory,
        "diff": cmd_diff,
        "report": cmd_report,
        "merge": cmd_merge,
        "inspect": cmd_inspect,
        "golden": cmd_golden,
    }[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit: a reader gone by now is caught below
        return code
    except BrokenPipeError:
        # The reader went away (`ckpt-matrix list | head`): stop quietly, as a Unix tool killed
        # by SIGPIPE does, with its status 128 + SIGPIPE. Whatever is still buffered goes to
        # /dev/null, so that the interpreter's last flush at exit has nothing to complain about.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except UserError as exc:
        print(f"ckpt-matrix {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as exc:
        # a path the user gave cannot be read or written (a folder, no permission, a full disk)
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"ckpt-matrix {args.command}: error:{where}: {exc.strerror or exc}; check the path "
            "and its permissions",
            file=sys.stderr,
        )
        return USAGE_ERROR
    except LauncherBroken as exc:
        print(
            f"ckpt-matrix {args.command}: the run stopped: {exc}\n"
            "What finished is recorded: `ckpt-matrix run --resume` with the same --out continues "
            "it; --launcher spawn runs without a zygote.",
            file=sys.stderr,
        )
        return STOPPED
    except Interrupted as exc:
        print(
            f"ckpt-matrix {args.command}: interrupted by {exc}; the workers were stopped and "
            "what finished is recorded: `ckpt-matrix run --resume` with the same --out "
            "finishes the run",
            file=sys.stderr,
        )
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"ckpt-matrix {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        # Not the user's mistake: a bug in the harness. Its traceback is the report.
        traceback.print_exc()
        print(
            f"ckpt-matrix {args.command}: internal error (a bug in ckpt-matrix, not in your "
            "input); please report it with the traceback above",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
