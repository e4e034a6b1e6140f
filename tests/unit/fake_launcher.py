"""A recording fake of the ``Launcher`` protocol: canned worker reports, no processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.jobs import Job, JobRun
from harness.core.jobspec import write_json_atomic

TENSORS = {"w": {"digest": "1", "dtype": "float32", "shape": [2], "device": "cpu"}}
BEFORE = {"w": {"digest": "0", "dtype": "float32", "shape": [2], "device": "cpu"}}


def probe(pid: int) -> dict[str, Any]:
    return {"pid": pid, "cuda_visible_devices": "", "device_count": 0, "uuids": []}


def saved(pid: int = 101) -> dict[str, Any]:
    return {
        "status": "saved",
        "sha256": "abc",
        "tensors": TENSORS,
        "output_digest": "o",
        "probe": probe(pid),
    }


def loaded(pid: int = 202) -> dict[str, Any]:
    return {
        "status": "loaded",
        "tensors": TENSORS,
        "output_digest": "o",
        "probe": probe(pid),
        "before": BEFORE,
    }


Behaviour = Callable[[Job, dict[str, Any]], JobRun]


def report(job: Job, data: dict[str, Any]) -> JobRun:
    write_json_atomic(job.report_path, data)
    return JobRun(
        name=job.name, returncode=0, timed_out=False, duration_s=0.01, stderr_tail="", report=data
    )


def crash(job: Job, _: dict[str, Any]) -> JobRun:
    return JobRun(
        name=job.name,
        returncode=-11,
        timed_out=False,
        duration_s=0.01,
        stderr_tail="Fatal Python error: Segmentation fault",
        report=None,
    )


@dataclass
class RecordingLauncher:
    """Answers save jobs with ``saved()`` and load jobs with ``loaded()`` unless ``behaviours``
    names the job; records every job it was asked to run."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)
    stopped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, job: Job) -> JobRun:
        with self._lock:
            self.jobs.append(job)
        if not job.argv[-1].endswith("-spec.json"):  # not a save or load job: no default
            return self.behaviours[job.name](job, {})
        spec = json.loads(Path(job.argv[-1]).read_text(encoding="utf-8"))
        default = saved() if spec["role"] == "save" else loaded()
        return self.behaviours.get(job.name, report)(job, default)

    def stop_all(self) -> None:
        self.stopped += 1

    def names(self) -> list[str]:
        return [job.name for job in self.jobs]
