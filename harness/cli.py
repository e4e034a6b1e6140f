"""The ``ckpt-matrix`` command: ``run``, ``list``, ``inventory``, ``report``, ``diff``,
``upgrade-report``, ``ladder-report``, ``merge``, ``inspect``, ``golden``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness.certify.diff import compare
from harness.certify.diff import to_markdown as diff_markdown
from harness.certify.ladder import climb
from harness.certify.ladder import to_markdown as ladder_markdown
from harness.certify.report import report_html, report_markdown
from harness.certify.upgrade import certify_upgrade
from harness.certify.upgrade import to_html as upgrade_html
from harness.certify.upgrade import to_markdown as upgrade_markdown
from harness.core.errors import UserError
from harness.core.results import ResultsFile, ResultsWriter, read_results
from harness.core.results import merge as merge_results
from harness.core.summary import summary_table
from harness.core.visibility import parse_policy
from harness.launchers import LauncherBroken
from harness.run.options import ABSENT, RunOptions, add_options
from harness.run.planning import TooFewGpus, chosen_subsets, machine_inventory, plan_matrix
from harness.run.signals import Interrupted
from harness.run.usecase import Destination, MatrixWork, execute

USAGE_ERROR = 2
STOPPED = 3  # the run could not go on (a launcher broke); what finished is recorded
INTERNAL_ERROR = 70  # a bug in the harness (EX_SOFTWARE): its traceback is printed
BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the reader of stdout went away, as for `seq | head`


class UsageError(UserError):
    """Bad input from the command line; the message says what and how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckpt-matrix",
        description="Certify how PyTorch models survive save and load across device layouts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def matrix_options(sub: argparse.ArgumentParser) -> None:
        add_options(
            sub.add_argument,
            "cli",
            ("scenarios", "select", "models", "visibility", "min_gpus", "shard"),
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
    add_options(run.add_argument, "cli", ("jobs", "timeout_s", "gpu_slots", "launcher"))
    run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep checkpoints, specs and worker logs here (default: a temporary folder)",
    )
    run.add_argument(
        "--keep-saves",
        action="store_true",
        help="load the checkpoints an earlier run saved in --workdir instead of saving again "
        "(save under one torch, load under another; each result names both)",
    )
    add_options(run.add_argument, "cli", ("rerun_errors",))
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

    upgrade = commands.add_parser(
        "upgrade-report",
        help="certify a torch upgrade from the runs under each release and the files the older "
        "saved, loaded by the newer: exit 0 certified, 1 not, 2 unusable input",
    )
    upgrade.add_argument("old", type=Path, help="the matrix run under the older torch")
    upgrade.add_argument("new", type=Path, help="the matrix run under the newer torch")
    upgrade.add_argument(
        "crossed", type=Path, help="the newer torch's run loading the files the older saved"
    )
    upgrade.add_argument(
        "--backward",
        type=Path,
        default=None,
        help="the older torch's run loading the files the newer saved (told, never gating)",
    )
    upgrade.add_argument(
        "--golden",
        type=Path,
        action="append",
        default=[],
        help="golden verify's results under the newer torch (repeatable)",
    )
    upgrade.add_argument("--markdown", type=Path, default=None, help="write the Markdown here")
    upgrade.add_argument("--html", type=Path, default=None, help="write the HTML page here")

    ladder = commands.add_parser(
        "ladder-report",
        help="the release ladder's table: each older release's files loaded under the newest, "
        "by format: exit 0 every cell as predicted, 1 not, 2 unusable input",
    )
    ladder.add_argument(
        "--rung",
        nargs=2,
        type=Path,
        action="append",
        required=True,
        metavar=("OWN", "CROSSED"),
        help="an older release's own run and the newest release's run loading its files "
        "(repeatable, oldest first)",
    )
    ladder.add_argument(
        "--golden",
        type=Path,
        action="append",
        default=[],
        help="golden verify's results of the corpus under the newest release (repeatable)",
    )
    ladder.add_argument("--markdown", type=Path, default=None, help="write the Markdown here")

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
        add_options(sub.add_argument, "cli", ("jobs", "timeout_s", "launcher"))
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
    """The options the command parsed (those it has; the rest keep their defaults)."""
    return RunOptions.read(
        lambda name: getattr(args, name, ABSENT),
        "cli",
        **{name: getattr(args, name) for name in ("simulate_gpus",) if hasattr(args, name)},
    )


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


def cmd_golden(args: argparse.Namespace) -> int:
    """``golden record PATH...`` or ``golden verify GOLDEN``: one worker job per file, through
    the run use case; the exit code reduces the outcomes."""
    from harness.certify.golden import record_work, verify_out, verify_work

    options = run_options(args)
    options.check()
    inventory = machine_inventory(RunOptions(), os.environ)
    if args.golden_command == "record":
        work = record_work(
            args.paths,
            options,
            inventory,
            map_location=args.map_location,
            safe_globals=args.safe_globals,
        )
    else:
        work = verify_work(args.golden, options, inventory)
    out = verify_out(args.golden) if args.out is None else args.out
    destination = Destination(
        out=out,
        overwrite=args.overwrite,
        workdir=args.workdir,
        workdir_prefix="ckpt-matrix-golden-",
        resumable=False,
    )
    finished = execute(work, options, destination)
    print(summary_table(list(finished.results)))
    print(f"\n{len(finished.results)} files in {out}")
    return finished.exit_code


def cmd_list(args: argparse.Namespace) -> int:
    options = run_options(args)
    if args.count:
        inventory = machine_inventory(options, os.environ)
        gpus = len(inventory.gpus)
        print(f"# {gpus} GPU(s){' (simulated)' if inventory.simulated else ''}")
        for name in ("minimal", "pairs", "all:2", "all:3", "sample:8", "sample:32"):
            try:
                planned = plan_matrix(replace(options, visibility=name), inventory=inventory)
                subsets, cells = len(planned.subsets), len(planned.cells)
            except TooFewGpus:  # none as large as --min-gpus under this policy
                subsets, cells = len(chosen_subsets(parse_policy(name), inventory)), 0
            print(f"{name:<10} {subsets:>5} subsets {cells:>7} cells")
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


def verified_together(paths: Sequence[Path]) -> ResultsFile | None:
    """Several ``golden verify`` results as one (their cells together), or None for none."""
    if not paths:
        return None
    parts = [read_results(path) for path in paths]
    return replace(parts[0], results=[r for part in parts for r in part.results])


def cmd_upgrade_report(args: argparse.Namespace) -> int:
    def optional(path: Path | None) -> ResultsFile | None:
        return None if path is None else read_results(path)

    upgrade = certify_upgrade(
        read_results(args.old),
        read_results(args.new),
        read_results(args.crossed),
        backward=optional(args.backward),
        golden=verified_together(args.golden),
    )
    text = upgrade_markdown(upgrade)
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    if args.html is not None:
        args.html.write_text(upgrade_html(upgrade), encoding="utf-8")
    return 0 if upgrade.certified else 1


def cmd_ladder_report(args: argparse.Namespace) -> int:
    ladder = climb(
        [(read_results(own), read_results(crossed)) for own, crossed in args.rung],
        [read_results(path) for path in args.golden],
    )
    text = ladder_markdown(ladder)
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    return 0 if ladder.holds else 1


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
    work = MatrixWork(planned=plan_matrix(options), options=options, out=args.out)
    destination = Destination(
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        workdir=args.workdir,
        keep_saves=args.keep_saves,
    )
    finished = execute(work, options, destination)
    print(summary_table(list(finished.results)))
    print(
        f"\n{len(finished.results)} cells in {args.out}; this run took "
        f"{finished.cells_s:.1f} s for {finished.ran} cells"
    )
    return finished.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "list": cmd_list,
        "inventory": cmd_inventory,
        "diff": cmd_diff,
        "upgrade-report": cmd_upgrade_report,
        "ladder-report": cmd_ladder_report,
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
