"""Save once, load many: a store of saved artifacts shared by threads and processes.

The first cell that needs an artifact runs its save job under a file lock; every other cell,
in this process or in another pytest-xdist worker, waits for the lock and reuses the record.
A failed save is recorded too, so it is reported once per cell without being retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from filelock import FileLock

from harness.core.cell import SaveKey
from harness.core.jobspec import write_json_atomic
from harness.launchers.protocol import Launcher
from harness.run.jobs import JobFactory


@dataclass(frozen=True, kw_only=True)
class SavedArtifact:
    key: str
    path: str
    report: dict[str, Any] | None  # the saver's report when the save succeeded
    failure: str | None  # why not, otherwise (exit code or signal, and the stderr tail)
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.report is not None and self.failure is None


class ArtifactStore:
    def __init__(self, factory: JobFactory, launcher: Launcher) -> None:
        self.factory = factory
        self.launcher = launcher

    def get(self, key: SaveKey) -> SavedArtifact:
        folder = self.factory.artifact_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        record_path = folder / "record.json"
        with FileLock(str(folder) + ".lock"):
            if record_path.exists():
                return SavedArtifact(**json.loads(record_path.read_text(encoding="utf-8")))
            job = self.factory.save_job(key)
            run = self.launcher.launch(job)
            if run.lost is not None:
                # the launcher lost the job (its zygote died): this save fails, and the next cell
                # that needs the artifact tries again
                return SavedArtifact(
                    key=key.id,
                    path=str(self.factory.artifact_path(key)),
                    report=None,
                    failure=run.failure(),
                    duration_s=run.duration_s,
                )
            # a save that raised (torch.save refusing the object) is an observation, kept
            saved = run.report is not None and run.report.get("status") in ("saved", "raised")
            artifact = SavedArtifact(
                key=key.id,
                path=str(self.factory.artifact_path(key)),
                report=run.report if run.ok and saved else None,
                failure=None
                if run.ok and saved
                else f"{run.failure()}\n--- log tail ---\n{run.stderr_tail}",
                duration_s=run.duration_s,
            )
            write_json_atomic(record_path, artifact.__dict__)
            return artifact
