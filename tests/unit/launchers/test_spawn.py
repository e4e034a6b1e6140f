"""The spawn launcher with real child processes: crashes, signals and timeouts are results."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from harness.core.jobs import Job
from harness.launchers.protocol import (
    finished_run,
    rank_failures,
    tail,
    torchrun_failures,
    worker_argv,
)
from harness.launchers.spawn import SpawnLauncher


def job(tmp_path: Path, name: str, code: str, timeout_s: float = 30.0) -> Job:
    report = tmp_path / f"{name}.json"
    return Job(
        name=name,
        argv=(sys.executable, "-c", code),
        env={**os.environ, "REPORT": str(report)},
        timeout_s=timeout_s,
        log_path=tmp_path / f"{name}.log",
        report_path=report,
    )


WRITES_REPORT = (
    "import json, os, sys; print('hello', file=sys.stderr); "
    "json.dump({'status': 'saved'}, open(os.environ['REPORT'], 'w'))"
)
EXITS_3 = "import sys; print('bad spec', file=sys.stderr); sys.exit(3)"
SEGFAULTS = (
    "import ctypes, sys; print('about to crash', file=sys.stderr, flush=True); ctypes.string_at(0)"
)
SLEEPS = "import sys, time; print('sleeping', file=sys.stderr, flush=True); time.sleep(60)"


def test_a_good_job_reports(tmp_path: Path) -> None:
    run = SpawnLauncher().launch(job(tmp_path, "good", WRITES_REPORT))
    assert run.ok
    assert run.report == {"status": "saved"}
    assert "hello" in run.stderr_tail


def test_crashes_and_timeouts_become_results_and_the_run_goes_on(tmp_path: Path) -> None:
    launcher = SpawnLauncher(grace_s=1.0)
    runs = [
        launcher.launch(job(tmp_path, "exit3", EXITS_3)),
        launcher.launch(job(tmp_path, "segv", SEGFAULTS)),
        launcher.launch(job(tmp_path, "sleepy", SLEEPS, timeout_s=2.0)),
        launcher.launch(job(tmp_path, "after", WRITES_REPORT)),
    ]
    exit3, segv, sleepy, after = runs
    assert not exit3.ok
    assert exit3.returncode == 3
    assert exit3.failure() == (
        "exit3: worker exited with code 3; the child died before writing a usable report"
    )
    assert "bad spec" in exit3.stderr_tail
    assert segv.signal_name == "SIGSEGV"
    assert "killed by SIGSEGV" in segv.failure()
    assert "about to crash" in segv.stderr_tail
    assert sleepy.timed_out
    assert 2.0 <= sleepy.duration_s < 10.0
    assert "timed out after" in sleepy.failure()
    assert "sleeping" in sleepy.stderr_tail
    assert after.ok


def test_sigterm_is_escalated_to_sigkill(tmp_path: Path) -> None:
    ignores_term = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('stubborn', file=sys.stderr, flush=True); time.sleep(60)"
    )
    run = SpawnLauncher(grace_s=0.5).launch(job(tmp_path, "stubborn", ignores_term, timeout_s=1.0))
    assert run.timed_out
    assert run.signal_name == "SIGKILL"


def test_each_job_gets_its_own_process_group(tmp_path: Path) -> None:
    code = (
        "import os, json; "
        "json.dump({'pgid': os.getpgid(0), 'pid': os.getpid()}, open(os.environ['REPORT'], 'w'))"
    )
    run = SpawnLauncher().launch(job(tmp_path, "group", code))
    assert run.report is not None
    assert run.report["pgid"] == run.report["pid"] != os.getpgid(0)


def test_stop_all_ends_running_jobs(tmp_path: Path) -> None:
    launcher = SpawnLauncher(grace_s=1.0)
    runs = []
    thread = threading.Thread(
        target=lambda: runs.append(launcher.launch(job(tmp_path, "s", SLEEPS)))
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not launcher.running and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher.stop_all()
    thread.join(timeout=20)
    assert runs
    assert runs[0].signal_name == "SIGTERM"


def test_tail_reads_the_end(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x" * 5000 + b"END")
    assert tail(path, limit=10) == "xxxxxxxEND"
    assert tail(tmp_path / "absent") == ""


def test_after_stop_all_no_job_starts(tmp_path: Path) -> None:
    launcher = SpawnLauncher()
    launcher.stop_all()
    after = launcher.launch(job(tmp_path, "after", WRITES_REPORT))
    assert after.lost == "the run is stopping; no new job starts"
    assert not (tmp_path / "after.json").exists()


RECORDED_TORCHRUN = (Path(__file__).parents[2] / "data" / "torchrun_failure.txt").read_text()


def test_torchruns_summary_names_the_failed_ranks_root_cause_first() -> None:
    failed = torchrun_failures(RECORDED_TORCHRUN)
    assert failed == [(1, -6), (2, 3)]  # rank 0 was stopped by torchrun (SIGTERM): not a failure
    assert rank_failures(failed, 3) == (
        "rank 1 of 3 was killed by SIGABRT; rank 2 of 3 exited with code 3 "
        "(the other ranks were stopped)"
    )
    assert torchrun_failures("Traceback (most recent call last):\nValueError: x") == []


def test_a_torchrun_job_whose_ranks_fail_names_them(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-spec.json"
    distributed = replace(
        job(tmp_path, "ranks", ""), argv=worker_argv(sys.executable, str(missing)), ranks=2
    )
    run = SpawnLauncher().launch(distributed)
    assert not run.ok
    assert run.failed_ranks is not None
    assert run.failed_ranks.startswith(("rank 0 of 2 exited with code 1", "rank 1 of 2 exited"))
    assert "no-such-spec.json" in run.stderr_tail


def test_a_failed_distributed_job_says_what_each_crashed_rank_raised(tmp_path: Path) -> None:
    ranks = replace(job(tmp_path, "load", ""), ranks=2, role="load")
    crash = {"status": "crashed", "exception_type": "RuntimeError", "message": "shape mismatch"}
    (tmp_path / "load.rank1.json").write_text(json.dumps(crash))
    run = finished_run(
        ranks,
        returncode=1,
        timed_out=False,
        started=time.monotonic(),
        failed_ranks=rank_failures([(1, 1)], 2),
    )
    assert run.failure() == (
        "load: rank 1 of 2 exited with code 1 (the other ranks were stopped); "
        "rank 1: RuntimeError: shape mismatch"
    )
