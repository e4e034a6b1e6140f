"""``python -m harness.worker SPEC.json`` runs one job (``harness.worker.job``);
``--environment`` prints the torch side of the environment as JSON; ``--zygote`` serves jobs by
forking (``harness.worker.zygote``). Exit 0 when a report was written, 1 when the job itself
broke (its report then says why), 2 for unusable arguments."""

from __future__ import annotations

import os
import sys

USAGE = (
    "usage: python -m harness.worker SPEC.json | --environment [REPORT.json] "
    "| --zygote [--no-torchvision] [--distributed]"
)
ZYGOTE_FLAGS = {"--no-torchvision", "--distributed"}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--zygote"] and set(argv[1:]) <= ZYGOTE_FLAGS:
        from harness.worker.zygote import preload, serve

        vision, distributed = "--no-torchvision" not in argv, "--distributed" in argv
        # The answers keep the original stdout; whatever an import prints goes to stderr (the
        # zygote's log), so that no stray line can corrupt the protocol.
        sys.stdout.flush()
        answers = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        return serve(
            sys.stdin.buffer,
            answers,
            load=lambda: preload(torchvision=vision, distributed=distributed),
        )
    from harness.worker.job import run_job

    code = run_job(argv)
    if code == 2:
        print(USAGE, file=sys.stderr)
    return code
