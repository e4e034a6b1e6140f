"""``python -m harness.worker SPEC.json`` runs one job (``harness.worker.job``);
``--environment`` prints the torch side of the environment as JSON; ``--zygote`` serves jobs by
forking (``harness.worker.fork_server``). Exit 0 when a report was written, 1 when the job itself
broke (its report then says why), 2 for unusable arguments."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

USAGE = (
    "usage: python -m harness.worker SPEC.json | --environment [REPORT.json] "
    "| --zygote [--no-torchvision] [--distributed] [--import MODULE]..."
)
ZYGOTE_FLAGS = {"--no-torchvision", "--distributed"}


@dataclass(frozen=True)
class ZygoteOptions:
    torchvision: bool = True
    distributed: bool = False
    modules: tuple[str, ...] = ()  # a user's model modules, imported last


def zygote_options(argv: list[str]) -> ZygoteOptions | None:
    """The zygote's options, or None where ``argv`` is not a zygote's command line."""
    if argv[:1] != ["--zygote"]:
        return None
    flags, modules, rest = set(), [], argv[1:]
    while rest:
        if rest[0] == "--import" and len(rest) > 1 and not rest[1].startswith("-"):
            modules.append(rest[1])
            rest = rest[2:]
        elif rest[0] in ZYGOTE_FLAGS:
            flags.add(rest.pop(0))
        else:
            return None
    return ZygoteOptions(
        torchvision="--no-torchvision" not in flags,
        distributed="--distributed" in flags,
        modules=tuple(modules),
    )


def main(argv: list[str]) -> int:
    zygote = zygote_options(argv)
    if zygote is not None:
        from harness.worker.fork_server import UnsafeImport, preload, serve, start_afresh

        cwd, environ = str(Path.cwd()), dict(os.environ)
        # The answers keep the original stdout; whatever an import prints goes to stderr (the
        # zygote's log), so that no stray line can corrupt the protocol.
        sys.stdout.flush()
        answers = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        try:
            watch = preload(
                torchvision=zygote.torchvision,
                distributed=zygote.distributed,
                modules=zygote.modules,
            )
        except UnsafeImport as unsafe:
            start_afresh(argv, unsafe, answers, cwd=cwd, environ=environ)
        return serve(sys.stdin.buffer, answers, load=lambda: watch)
    from harness.worker.job import run_job

    code = run_job(argv)
    if code == 2:
        print(USAGE, file=sys.stderr)
    return code
