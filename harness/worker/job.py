"""One worker job: read a spec file, save or load, write the report; or report the torch side of
the environment (``--environment [REPORT.json] [--models NAME...]``: as JSON on stdout, or
into the report, with each named model's measured traits). What a
spawned worker (``python -m harness.worker ARGS``) and a child of the zygote both run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from harness.core.axes import Layout
from harness.core.jobspec import (
    GoldenSpec,
    SaveSpec,
    Spec,
    rank_path,
    spec_from_json,
    write_json_atomic,
)
from harness.worker import faults


def _environment(args: list[str]) -> int:
    """``--environment [REPORT] [--models NAME...]``: the torch side of the environment, and each
    named model's measured traits (or why it cannot be built), as JSON on stdout or into REPORT."""
    from harness.worker.probe import environment, measure_model

    report, models = None, []
    if args and not args[0].startswith("--"):
        report, args = Path(args[0]), args[1:]
    if args:
        if args[0] != "--models":
            return 2
        models = args[1:]
    found = environment()
    if models:
        found["models"] = {name: measure_model(name) for name in models}
    if report is None:
        print(json.dumps(found))
    else:
        write_json_atomic(report, found)
    return 0


def orchestrator_gone() -> bool:
    """Whether the orchestrator that started this worker (``CKPT_MATRIX_ORCHESTRATOR``) has
    died: a SIGKILL leaves nobody to stop the worker, so it stops itself."""
    pid = os.environ.get("CKPT_MATRIX_ORCHESTRATOR", "")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed orchestrator not yet reaped is a zombie: gone all the same
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


def watch_orchestrator(interval_s: float = 1.0) -> None:
    """A daemon thread that ends this worker's process group once its orchestrator is gone."""

    def watch() -> None:
        while not orchestrator_gone():
            time.sleep(interval_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="orchestrator-watch", daemon=True).start()


def run_job(args: list[str]) -> int:
    """Exit 0 when a report was written, 1 when the job itself broke (its report then says
    why), 2 for unusable arguments."""
    if args[:1] == ["--environment"]:
        return _environment(args[1:])
    if len(args) != 1 or args[0].startswith("--"):
        return 2
    spec_path = Path(args[0])
    spec = spec_from_json(json.loads(spec_path.read_text(encoding="utf-8")), str(spec_path))
    # only a launcher's worker: CKPT_MATRIX_ORCHESTRATOR is set in job environments alone, and
    # such a worker leads its own process group (a torchrun rank is in torchrun's)
    leads = os.getpgrp() == os.getpid() or "RANK" in os.environ
    if os.environ.get("CKPT_MATRIX_ORCHESTRATOR") and leads:
        watch_orchestrator()

    from harness.worker.one_process import configure_torch

    configure_torch()
    report_path = Path(spec.report_path)
    name = (
        spec.label
        if isinstance(spec, GoldenSpec)
        else (spec.cell_key if isinstance(spec, SaveSpec) else spec.cell_id)
    )
    if os.environ.get(faults.VARIABLE):  # the harness's own tests inject faults this way
        try:
            faults.before(name, spec.role, str(report_path))
        except Exception as exc:  # memory exhausted, say: the job broke, as it would in its work
            return _crashed(rank_report(spec, report_path), exc)
    code = _perform(spec, report_path)
    if os.environ.get(faults.VARIABLE):
        faults.after(name, spec.role, rank_report(spec, report_path))
    return code


def rank_report(spec: Spec, report_path: Path) -> Path:
    """Where this process writes its report: a distributed job's rank beside rank 0's."""
    if isinstance(spec, GoldenSpec) or not Layout(spec.layout).distributed:
        return report_path
    return rank_path(report_path, int(os.environ.get("RANK", "0")))


def _perform(spec: Spec, report_path: Path) -> int:
    report_path = rank_report(spec, report_path)
    try:
        report = _save_or_load(spec)
    except Exception as exc:
        return _crashed(report_path, exc)
    write_json_atomic(report_path, report)
    return 0


def _crashed(report_path: Path, exc: Exception) -> int:
    """The job itself broke: its report says how, and the exit code is 1."""
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


def _save_or_load(spec: Spec) -> dict[str, Any]:
    """Load a golden file, or save or load by the spec's layout: one process, or one of a
    distributed job's ranks (each with its own report)."""
    if isinstance(spec, GoldenSpec):
        from harness.worker.golden_load import run_golden

        return run_golden(spec)
    if Layout(spec.layout).distributed:
        if isinstance(spec, SaveSpec):
            from harness.worker.distributed import run_save

            return run_save(spec)
        from harness.worker.distributed_recipes import run_load

        return run_load(spec)
    from harness.worker import one_process

    return one_process.run_save(spec) if isinstance(spec, SaveSpec) else one_process.run_load(spec)
