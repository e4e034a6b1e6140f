"""The zygote launcher with real processes: a zygote that serves fake jobs (no torch) for the
ways a child can end, and the real zygote for one real worker job."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.plan import worker_env
from harness.launchers.protocol import Job
from harness.zygote import ZygoteError, ZygoteLauncher

# A zygote whose children act out the behaviour named by the job's first argument.
FAKE_ZYGOTE = """
import os, signal, sys, time
from harness.worker.zygote import serve

def run(args):
    what = args[0]
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    print("child", os.getpid(), "sid", os.getsid(0), "cvd", repr(seen))
    if what == "exit3":
        return 3
    if what == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "sleep":
        time.sleep(60)
    if what == "report":
        with open(args[1], "w") as f:
            f.write('{"status": "saved"}')
        return 0
    if what == "raise":
        raise RuntimeError("the job broke")
    return 0

sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer, run=run, load=lambda: None))
"""


def job(tmp_path: Path, name: str, *args: str, timeout_s: float = 30.0, **env: str) -> Job:
    return Job(
        name=name,
        argv=(sys.executable, "-m", "harness.worker", *args),
        env={**os.environ, **env},
        timeout_s=timeout_s,
        log_path=tmp_path / f"{name}.log",
        report_path=tmp_path / f"{name}.json",
    )


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ZygoteLauncher]:
    fake = ZygoteLauncher(
        env=dict(os.environ),
        log_path=tmp_path / "zygote.log",
        grace_s=1.0,
        command=(sys.executable, "-c", FAKE_ZYGOTE),
    )
    yield fake
    fake.stop_all()


def test_exit_codes_signals_and_reports_come_back(launcher: ZygoteLauncher, tmp_path: Path) -> None:
    exited = launcher.launch(job(tmp_path, "a", "exit3"))
    assert exited.returncode == 3
    assert "exited with code 3" in exited.failure()
    crashed = launcher.launch(job(tmp_path, "b", "segv"))
    assert crashed.signal_name == "SIGSEGV"
    raised = launcher.launch(job(tmp_path, "c", "raise"))
    assert raised.returncode == 1
    assert "RuntimeError: the job broke" in raised.stderr_tail
    report = tmp_path / "d.json"
    done = launcher.launch(job(tmp_path, "d", "report", str(report)))
    assert done.ok
    assert done.report == {"status": "saved"}


def test_each_child_has_its_own_session_and_the_jobs_environment(
    launcher: ZygoteLauncher, tmp_path: Path
) -> None:
    run = launcher.launch(job(tmp_path, "env", "ok", CUDA_VISIBLE_DEVICES="GPU-1234"))
    assert run.returncode == 0
    words = run.stderr_tail.split()
    pid, sid = int(words[1]), int(words[3])
    assert pid == sid  # a new session: its process group can be signalled alone
    assert pid != os.getpid()
    assert words[5] == "'GPU-1234'"


def test_a_timeout_kills_the_child_and_the_zygote_goes_on(
    launcher: ZygoteLauncher, tmp_path: Path
) -> None:
    slow = launcher.launch(job(tmp_path, "slow", "sleep", timeout_s=1.0))
    assert slow.timed_out
    assert slow.returncode is not None
    assert slow.returncode < 0
    assert 1.0 <= slow.duration_s < 10
    assert "timed out after" in slow.failure()
    after = launcher.launch(job(tmp_path, "after", "exit3"))
    assert after.returncode == 3


def test_jobs_from_several_threads_run_at_once(launcher: ZygoteLauncher, tmp_path: Path) -> None:
    results: dict[int, int | None] = {}

    def one(n: int) -> None:
        results[n] = launcher.launch(job(tmp_path, f"t{n}", "exit3")).returncode

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == dict.fromkeys(range(6), 3)


def test_only_worker_jobs_are_accepted(launcher: ZygoteLauncher, tmp_path: Path) -> None:
    other = Job(
        name="sh",
        argv=("/bin/sh", "-c", "true"),
        env={},
        timeout_s=5.0,
        log_path=tmp_path / "sh.log",
        report_path=tmp_path / "sh.json",
    )
    with pytest.raises(ValueError, match="the zygote runs only worker jobs"):
        launcher.launch(other)


def test_a_zygote_that_dies_is_a_clear_error(tmp_path: Path) -> None:
    dead = ZygoteLauncher(
        env=dict(os.environ),
        log_path=tmp_path / "zygote.log",
        command=(sys.executable, "-c", "import sys; print('no torch here', file=sys.stderr)"),
    )
    with pytest.raises(ZygoteError, match=r"exited with code 0; its log .* ends: no torch here"):
        dead.launch(job(tmp_path, "x", "exit3"))


@pytest.mark.slow
def test_the_real_zygote_runs_a_worker_job(tmp_path: Path) -> None:
    from harness.artifacts import ArtifactStore
    from harness.axes import Format, Layout
    from harness.cell import Cell
    from harness.plan import JobFactory

    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe="strip_prefix",
    )
    real = ZygoteLauncher(env=worker_env(()), log_path=tmp_path / "zygote.log")
    try:
        factory = JobFactory(workdir=tmp_path)
        artifact = ArtifactStore(factory, real).get(cell.save_key)
        assert artifact.ok, artifact.failure
        assert artifact.report is not None
        load = real.launch(
            factory.load_job(cell, artifact_path=artifact.path, sha256=artifact.report["sha256"])
        )
        assert load.ok, load.failure()
        assert load.report is not None
        assert load.report["status"] == "loaded"
        # forked children, not the zygote and not this process
        pids = {artifact.report["probe"]["pid"], load.report["probe"]["pid"], os.getpid()}
        assert len(pids) == 3
    finally:
        real.stop_all()
