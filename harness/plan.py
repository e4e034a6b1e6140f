"""Turning cells into worker jobs: the environment each worker starts with, and its spec file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.cell import Cell, SaveKey, Visibility, visibility_env
from harness.jobspec import LoadSpec, SaveSpec, Spec, spec_to_json
from harness.runner import Job

DEFAULT_TIMEOUT_S = 120.0

# Variables the harness sets in every worker; an outer value is replaced, never inherited.
_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def worker_env(visibility: Visibility, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: the parent's, with CUDA_VISIBLE_DEVICES set explicitly (empty
    for the CPU fallback) before torch starts in the child."""
    env = dict(os.environ if base is None else base)
    env["CUDA_VISIBLE_DEVICES"] = visibility_env(visibility)
    env.update(_THREADS)
    env["PYTHONHASHSEED"] = "0"
    return env


@dataclass(frozen=True, kw_only=True)
class JobFactory:
    """Writes spec files under ``workdir`` and describes the process that runs each one."""

    workdir: Path
    timeout_s: float = DEFAULT_TIMEOUT_S
    python: str = sys.executable

    def artifact_dir(self, key: SaveKey) -> Path:
        return self.workdir / "artifacts" / key.id

    def save_job(self, key: SaveKey) -> Job:
        folder = self.artifact_dir(key)
        spec = SaveSpec(
            cell_key=key.id,
            model=key.model,
            layout=str(key.layout),
            variant=str(key.variant),
            artifact_path=str(folder / "checkpoint.pt"),
            report_path=str(folder / "save-report.json"),
        )
        return self._job(key.id, spec, folder / "save", key.visibility)

    def load_job(self, cell: Cell, *, artifact_path: str, sha256: str) -> Job:
        folder = self.workdir / "cells" / cell.id
        spec = LoadSpec(
            cell_id=cell.id,
            model=cell.model,
            layout=str(cell.load_layout),
            recipe=cell.recipe,
            artifact_path=artifact_path,
            artifact_sha256=sha256,
            report_path=str(folder / "load-report.json"),
        )
        return self._job(cell.id, spec, folder / "load", cell.load_visibility)

    def _job(self, name: str, spec: Spec, stem: Path, visibility: Visibility) -> Job:
        stem.parent.mkdir(parents=True, exist_ok=True)
        spec_path = stem.with_name(stem.name + "-spec.json")
        spec_path.write_text(json.dumps(spec_to_json(spec), indent=1), encoding="utf-8")
        return Job(
            name=name,
            argv=(self.python, "-m", "harness.worker", str(spec_path)),
            env=worker_env(visibility),
            timeout_s=self.timeout_s,
            log_path=stem.with_name(stem.name + ".log"),
            report_path=Path(spec.report_path),
        )
