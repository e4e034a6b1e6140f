"""GPU leases with real processes on the CPU: overlapping GPU sets take turns, disjoint ones
run at once, and opposite orders do not deadlock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.jobs import Job, JobRun
from harness.launchers.leases import GpuLeases, LeasedLauncher

HOLDER = """
import json, sys, time
from pathlib import Path
from harness.launchers.leases import GpuLeases
folder, gpus, out = Path(sys.argv[1]), [int(g) for g in sys.argv[2].split(",")], sys.argv[3]
slots = int(sys.argv[4])
with GpuLeases(folder, slots=slots).hold(gpus):
    start = time.time()
    time.sleep(0.6)
    end = time.time()
Path(out).write_text(json.dumps([start, end]))
"""


def hold_in_processes(tmp_path: Path, *sets: str, slots: int = 1) -> list[tuple[float, float]]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                str(tmp_path / "leases"),
                gpus,
                str(tmp_path / f"{n}.json"),
                str(slots),
            ]
        )
        for n, gpus in enumerate(sets)
    ]
    for proc in procs:
        assert proc.wait(timeout=30) == 0
    return [tuple(json.loads((tmp_path / f"{n}.json").read_text())) for n in range(len(sets))]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1])


def test_jobs_sharing_a_gpu_take_turns(tmp_path: Path) -> None:
    first, second = hold_in_processes(tmp_path, "0,1", "1,2")
    assert not overlap(first, second)


def test_jobs_on_disjoint_gpus_run_at_once(tmp_path: Path) -> None:
    first, second = hold_in_processes(tmp_path, "0", "1")
    assert overlap(first, second)


def test_opposite_orders_do_not_deadlock(tmp_path: Path) -> None:
    runs = hold_in_processes(tmp_path, "1,0", "0,1", "1,0")
    assert len(runs) == 3
    assert not any(overlap(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :])


def test_two_slots_let_two_jobs_share_a_gpu_and_make_the_third_wait(tmp_path: Path) -> None:
    runs = sorted(hold_in_processes(tmp_path, "0", "0", "0", slots=2))
    pairs = [overlap(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    assert any(pairs), "two slots: two jobs on one GPU should have run at once"
    assert not all(pairs), "two slots: the third job should have waited for a free slot"


def test_slots_with_several_gpus_do_not_deadlock(tmp_path: Path) -> None:
    runs = hold_in_processes(tmp_path, "1,0", "0,1", "1,0", "0,1", "1", slots=2)
    assert len(runs) == 5


def test_a_lease_is_released_for_the_next_job(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path / "leases", slots=2)
    for _ in range(3):  # would block on the third pass if a slot were kept
        with leases.hold([0]):
            pass
    assert sorted(p.name for p in (tmp_path / "leases").glob("*.lock")) == ["gpu0.lock"]


def test_zero_slots_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GPU slots 0: must be at least 1"):
        GpuLeases(tmp_path, slots=0)


class _Recording:
    def __init__(self, leases: GpuLeases) -> None:
        self.leases = leases
        self.held: list[list[str]] = []

    def launch(self, job: Job) -> JobRun:
        self.held.append(sorted(p.name for p in self.leases.folder.glob("gpu*.lock")))
        return JobRun(
            name=job.name, returncode=0, timed_out=False, duration_s=0.0, stderr_tail="", report={}
        )

    def stop_all(self) -> None:
        pass


def test_leased_launcher_takes_the_jobs_gpus(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path / "leases")
    inner = _Recording(leases)
    job = Job(
        name="j",
        argv=("true",),
        env={},
        timeout_s=1.0,
        log_path=tmp_path / "log",
        report_path=tmp_path / "r.json",
        gpus=(3, 1),
    )
    LeasedLauncher(inner, leases).launch(job)
    assert inner.held == [["gpu1.lock", "gpu3.lock"]]
    cpu_job = Job(
        name="c",
        argv=("true",),
        env={},
        timeout_s=1.0,
        log_path=tmp_path / "log",
        report_path=tmp_path / "r.json",
    )
    LeasedLauncher(inner, GpuLeases(tmp_path / "none")).launch(cpu_job)
    assert not (tmp_path / "none").exists()
