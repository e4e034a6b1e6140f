"""``python -m harness.worker SPEC.json`` runs one job; ``--environment`` prints the torch side of
the environment as JSON; ``--zygote`` serves jobs by forking (``harness.worker.zygote``). Exit 0
when a report was written, 1 when the job itself broke (its report then says why), 2 for unusable
arguments."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from harness.jobspec import SaveSpec, spec_from_json, write_json_atomic


def main(argv: list[str]) -> int:
    if argv == ["--environment"]:
        from harness.worker.probe import environment

        print(json.dumps(environment()))
        return 0
    if argv == ["--zygote"]:
        from harness.worker.zygote import serve

        return serve(sys.stdin.buffer, sys.stdout.buffer)
    if len(argv) != 1 or argv[0].startswith("--"):
        print(
            "usage: python -m harness.worker SPEC.json | --environment | --zygote",
            file=sys.stderr,
        )
        return 2
    spec_path = Path(argv[0])
    spec = spec_from_json(json.loads(spec_path.read_text(encoding="utf-8")), str(spec_path))

    from harness.worker.main import configure_torch, run_load, run_save

    configure_torch()
    report_path = Path(spec.report_path)
    try:
        report = run_save(spec) if isinstance(spec, SaveSpec) else run_load(spec)
    except Exception as exc:
        write_json_atomic(
            report_path,
            {
                "status": "crashed",
                "exception_type": type(exc).__qualname__,
                "message": str(exc)[:4000],
                "traceback": traceback.format_exc()[-4000:],
            },
        )
        traceback.print_exc()
        return 1
    write_json_atomic(report_path, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
