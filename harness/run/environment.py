"""The run's environment, for the results file's first line.

The orchestrator never imports torch (a process that touched CUDA cannot change its own device
visibility, and its forked children cannot use CUDA), so the torch side is read by a short
worker process: ``python -m harness.worker --environment``.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
from harness.core.devices import DeviceMap
from harness.core.errors import UserError
from harness.core.jobs import Job
from harness.launchers import DEFAULT_LAUNCHER
from harness.launchers.protocol import Launcher, worker_argv
from harness.run.inventory import Inventory
from harness.run.jobs import worker_env


class TorchUnavailableError(UserError):
    """The worker interpreter cannot report its torch; the message says how to fix it."""


def torch_environment(
    inventory: Inventory | None = None,
    *,
    python: str = sys.executable,
    timeout_s: float = 120.0,
    launcher: Launcher | None = None,
    workdir: Path | None = None,
    models: Sequence[str] = (),
) -> dict[str, Any]:
    """torch's version, CUDA build and what CUDA sees, read in a worker that sees every GPU of the
    run (``inventory``; none without one), so ``cuda_available`` and ``device_count`` describe
    the GPUs the cells use, not an empty visibility. With a ``launcher`` (and a ``workdir`` for
    the job's files) the worker is one of the run's own (a child of the zygote costs no torch
    import); without one, a fresh interpreter. ``models``: measure each one's traits (or say
    why it cannot be built): ``models`` in the answer."""
    argv = list(worker_argv(python, "--environment"))
    measure = ["--models", *models] if models else []
    gpus = inventory.indices if inventory is not None else ()
    devices = DeviceMap(inventory.uuids) if inventory is not None else None
    if launcher is not None and workdir is not None:
        report = workdir / "environment" / "torch.json"
        run = launcher.launch(
            Job(
                name="the torch side of the environment",
                argv=(*argv, str(report), *measure),
                env=worker_env(gpus, devices=devices),
                timeout_s=timeout_s,
                log_path=report.with_suffix(".log"),
                report_path=report,
                gpus=gpus,
            )
        )
        if not run.ok or run.report is None:
            raise TorchUnavailableError(
                f"{' '.join(argv)} failed: {run.failure()}\n{run.stderr_tail.strip()[-1500:]}\n"
                "Install torch into that interpreter (pip install torch) and try again."
            )
        return run.report
    try:
        done = subprocess.run(
            [*argv, *measure],
            env=worker_env(gpus, devices=devices),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TorchUnavailableError(
            f"{' '.join(argv)} did not answer in {timeout_s:.0f} s"
        ) from None
    if done.returncode != 0:
        raise TorchUnavailableError(
            f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}\n"
            f"Install torch into that interpreter (pip install torch) and try again."
        )
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def describe(
    torch_side: dict[str, Any],
    inventory: Inventory,
    *,
    visibility_policy: str,
    gpu_slots: int = 1,
    launcher: str = DEFAULT_LAUNCHER,
    shard: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The environment line; ``shard`` is the run's :func:`harness.core.shards.shard_record`, or
    None when the run was not sharded."""
    return {
        "harness_version": harness.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch_side["torch"],
        "torchvision": torch_side.get("torchvision"),
        "cuda_build": torch_side.get("cuda_build"),
        "cuda_available": torch_side.get("cuda_available"),
        # each model's traits as a worker measured them (what the oracle was given)
        "models": torch_side.get("models"),
        "gpus": inventory.to_json()["gpus"],
        "driver_version": inventory.driver_version,
        "cuda_driver_version": inventory.cuda_version,
        "inventory_source": inventory.source,
        "outer_cuda_visible_devices": inventory.outer_visible,
        "visibility_policy": visibility_policy,
        "started_at": now(),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "launcher": launcher,
        "gpu_slots": gpu_slots,
        "shard": shard,
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit(environ: Mapping[str, str] | None = None) -> str | None:
    """The harness's own commit, when it runs from a git checkout; ``CKPT_MATRIX_GIT_COMMIT``
    names it for a copy of a checkout without its .git (a CI artifact); None from a wheel."""
    named = (os.environ if environ is None else environ).get("CKPT_MATRIX_GIT_COMMIT")
    if named:
        return named
    source = Path(harness.__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
