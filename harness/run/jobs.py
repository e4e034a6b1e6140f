"""Turning cells into worker jobs: the environment each worker starts with, and its spec file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.axes import SaveVariant
from harness.core.cell import Cell, SaveKey, Visibility
from harness.core.devices import DeviceMap
from harness.core.jobs import Job
from harness.core.jobspec import LoadSpec, SaveSpec, Spec, spec_to_json
from harness.launchers.protocol import worker_argv

DEFAULT_TIMEOUT_S = 120.0

# Variables the harness sets in every worker; an outer value is replaced, never inherited.
_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


ORCHESTRATOR = "CKPT_MATRIX_ORCHESTRATOR"  # the pid of the process that started the worker


def worker_env(
    visibility: Visibility,
    base: Mapping[str, str] | None = None,
    devices: DeviceMap | None = None,
) -> dict[str, str]:
    """The worker's environment: the parent's, with CUDA_VISIBLE_DEVICES set explicitly (empty
    for the CPU fallback) before torch starts in the child."""
    env = dict(os.environ if base is None else base)
    env["CUDA_VISIBLE_DEVICES"] = (devices or DeviceMap()).env_value(visibility)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # indices as nvidia-smi numbers them
    if visibility:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # required by deterministic cuBLAS
    env.update(_THREADS)
    env["PYTHONHASHSEED"] = "0"
    # a worker (and the zygote) whose orchestrator was killed stops itself (harness.worker.job)
    env[ORCHESTRATOR] = str(os.getpid())
    return env


@dataclass(frozen=True, kw_only=True)
class JobFactory:
    """Writes spec files under ``workdir`` and describes the process that runs each one."""

    workdir: Path
    timeout_s: float = DEFAULT_TIMEOUT_S
    python: str = sys.executable
    devices: DeviceMap = field(default_factory=DeviceMap)

    def artifact_dir(self, key: SaveKey) -> Path:
        return self.workdir / "artifacts" / key.id

    def artifact_path(self, key: SaveKey) -> Path:
        """The checkpoint: a file, or a directory for a distributed checkpoint (DCP)."""
        dcp = key.variant in (SaveVariant.DCP, SaveVariant.DCP_ASYNC)
        name = "checkpoint.dcp" if dcp else "checkpoint.pt"
        return self.artifact_dir(key) / name

    def save_job(self, key: SaveKey) -> Job:
        folder = self.artifact_dir(key)
        spec = SaveSpec(
            cell_key=key.id,
            model=key.model,
            layout=str(key.layout),
            variant=str(key.variant),
            artifact_path=str(self.artifact_path(key)),
            report_path=str(folder / "save-report.json"),
            device="cpu" if key.simulated_tag else key.device,
            tag_as=key.simulated_tag,
            training=key.training,
            serialization=key.serialization,
            wrapper=str(key.wrapper),
        )
        ranks = key.world if key.layout.distributed else 0
        return self._job(key.id, spec, folder / "save", key.visibility, ranks)

    def cell_folder(self, cell: Cell) -> Path:
        """Where a cell's load job keeps its spec, log and report (``load-report.json``)."""
        return self.workdir / "cells" / cell.id

    def load_job(self, cell: Cell, *, artifact_path: str, sha256: str) -> Job:
        folder = self.cell_folder(cell)
        spec = LoadSpec(
            cell_id=cell.id,
            model=cell.model,
            layout=str(cell.load_layout),
            recipe=cell.recipe,
            artifact_path=artifact_path,
            artifact_sha256=sha256,
            report_path=str(folder / "load-report.json"),
            map_location=cell.map_location,
            saved_tag=cell.save_device,
            training=cell.training,
            wrapper=str(cell.load_wrapper),
        )
        ranks = cell.load_world if cell.load_layout.distributed else 0
        return self._job(cell.id, spec, folder / "load", cell.load_visibility, ranks)

    def spec_job(self, name: str, spec: Spec, stem: Path, visibility: Visibility) -> Job:
        """One plain worker process for ``spec`` (a golden file's job, say)."""
        return self._job(name, spec, stem, visibility, 0)

    def _job(self, name: str, spec: Spec, stem: Path, visibility: Visibility, ranks: int) -> Job:
        stem.parent.mkdir(parents=True, exist_ok=True)
        spec_path = stem.with_name(stem.name + "-spec.json")
        spec_path.write_text(json.dumps(spec_to_json(spec), indent=1), encoding="utf-8")
        return Job(
            name=name,
            argv=worker_argv(self.python, str(spec_path)),
            env=worker_env(visibility, devices=self.devices),
            timeout_s=self.timeout_s,
            log_path=stem.with_name(stem.name + ".log"),
            report_path=Path(spec.report_path),
            gpus=visibility,
            ranks=ranks,
            role=spec.role,
        )
