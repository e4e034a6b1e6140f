"""The zygote launcher with real processes: a zygote that serves fake jobs (no torch) for the
ways a child can end and the ways the zygote itself can fail, and the real zygote for real
worker jobs."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from harness.core.jobs import Job, JobRun
from harness.core.zygote_messages import ANSWER_FIELDS, NotPreloaded
from harness.launchers.protocol import LauncherBroken
from harness.launchers.zygote import HANDLERS, ZygoteLauncher, _Zygote
from harness.run.jobs import worker_env

# A zygote whose children act out the behaviour named by the job's first argument.
FAKE_ZYGOTE = """
import os, signal, sys, threading, time
from harness.worker.fork_server import Watch, serve, thread_count

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
    if what == "kill-zygote":
        print("killing the zygote", file=sys.stderr, flush=True)
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)
    if what == "exit42":  # the zygote garbles this job's answer (below)
        return 42
    if what == "nap":
        time.sleep(1.5)
    if what == "ranks":  # rank 1 crashes, the others would wait for it forever
        print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], "port",
              os.environ["MASTER_PORT"], os.environ["MASTER_ADDR"], flush=True)
        if os.environ["RANK"] == "1":
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)
    if what == "ranks-ok":
        print("rank", os.environ["RANK"], flush=True)
    return 0


class LaterHazard(Watch):
    # safe for the first fork, a hazard from then on
    forks = 0

    def hazard(self):
        LaterHazard.forks += 1
        return None if LaterHazard.forks == 1 else "a hazard after the first fork"


class Garble:
    # the zygote's answers, with the answer for a child that exited 42 replaced by garbage

    def __init__(self, out):
        self.out = out

    def write(self, data):
        if b'"returncode": 42' in data:
            data = b"this is not an answer\\n"
        return self.out.write(data)

    def flush(self):
        self.out.flush()

    def fileno(self):
        return self.out.fileno()


def load():
    if os.environ.get("FAKE_ZYGOTE_LATER"):
        return LaterHazard(threads_at_start=thread_count())
    watch = Watch(threads_at_start=thread_count())
    if os.environ.get("FAKE_ZYGOTE_THREAD"):  # as if an import had started a thread
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    return watch


sys.exit(serve(sys.stdin.buffer, Garble(sys.stdout.buffer), run=run, load=load))
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


def fake_zygote(tmp_path: Path, **env: str) -> ZygoteLauncher:
    return ZygoteLauncher(
        env={**os.environ, **env},
        log_path=tmp_path / "zygote.log",
        grace_s=1.0,
        command=(sys.executable, "-c", FAKE_ZYGOTE),
    )


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ZygoteLauncher]:
    fake = fake_zygote(tmp_path)
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


def test_a_zygote_that_cannot_start_stops_the_run_at_once(tmp_path: Path) -> None:
    dead = ZygoteLauncher(
        env=dict(os.environ),
        log_path=tmp_path / "zygote.log",
        command=(sys.executable, "-c", "import sys; print('no torch here', file=sys.stderr)"),
    )
    with pytest.raises(
        LauncherBroken, match=r"could not start: .*exited with code 0; its log .* ends: no torch"
    ):
        dead.launch(job(tmp_path, "x", "exit3"))


def in_thread(launcher: ZygoteLauncher, one: Job) -> tuple[threading.Thread, list[JobRun]]:
    runs: list[JobRun] = []
    thread = threading.Thread(target=lambda: runs.append(launcher.launch(one)))
    thread.start()
    return thread, runs


def wait_started(launcher: ZygoteLauncher, log: Path) -> None:
    """Until the child of a job has written its first line (the job is surely held)."""
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_zygote_that_dies_ends_its_jobs_at_once_restarts_once_then_stops_the_run(
    launcher: ZygoteLauncher, tmp_path: Path
) -> None:
    thread, runs = in_thread(launcher, job(tmp_path, "held", "sleep", timeout_s=60))
    wait_started(launcher, tmp_path / "held.log")
    started = time.monotonic()
    killer = launcher.launch(job(tmp_path, "killer", "kill-zygote", timeout_s=60))
    thread.join(timeout=20)
    assert time.monotonic() - started < 15  # nobody waited out a timeout
    [held] = runs
    for lost in (held, killer):
        assert not lost.ok
        assert lost.lost is not None
        assert "the zygote exited with code -9" in lost.failure()
        assert "its log" in lost.failure()
    # the held job's child was stopped too, not left running unseen
    held_pid = int(held.stderr_tail.split()[1])
    with pytest.raises(ProcessLookupError):
        os.kill(held_pid, 0)
    # restarted once: the run goes on
    again = launcher.launch(job(tmp_path, "again", "exit3"))
    assert again.returncode == 3
    assert (tmp_path / "zygote-restart-1.log").exists()
    # a second death stops the run, naming both
    second = launcher.launch(job(tmp_path, "killer2", "kill-zygote", timeout_s=60))
    assert second.lost is not None
    with pytest.raises(
        LauncherBroken, match=r"failed 2 times.*code -9.*then.*code -9.*Resume the run"
    ):
        launcher.launch(job(tmp_path, "never", "exit3"))


def test_a_malformed_answer_ends_every_pending_job_at_once(
    launcher: ZygoteLauncher, tmp_path: Path
) -> None:
    thread, runs = in_thread(launcher, job(tmp_path, "held", "sleep", timeout_s=60))
    wait_started(launcher, tmp_path / "held.log")
    started = time.monotonic()
    garbled = launcher.launch(job(tmp_path, "garbled", "exit42", timeout_s=60))
    thread.join(timeout=20)
    assert time.monotonic() - started < 15
    [held] = runs
    for lost in (garbled, held):
        assert lost.lost is not None
        assert "malformed answer" in lost.lost
        assert "this is not an answer" in lost.lost
    assert launcher.launch(job(tmp_path, "after", "exit3")).returncode == 3


def test_a_zygote_with_a_thread_refuses_to_fork_and_says_why(tmp_path: Path) -> None:
    threaded = fake_zygote(tmp_path, FAKE_ZYGOTE_THREAD="1")
    try:
        refused = threaded.launch(job(tmp_path, "first", "exit3"))
        assert refused.lost is not None
        assert "could not start it" in refused.lost
        assert "forking a threaded process" in refused.lost
        # it stopped forking: restarted once (the same hazard), then the run stops
        threaded.launch(job(tmp_path, "second", "exit3"))
        with pytest.raises(LauncherBroken, match="stopped forking"):
            threaded.launch(job(tmp_path, "third", "exit3"))
    finally:
        threaded.stop_all()
    assert "refusing to fork" in (tmp_path / "zygote.log").read_text()


def test_a_refusing_zygote_finishes_its_children_and_is_replaced(tmp_path: Path) -> None:
    later = fake_zygote(tmp_path, FAKE_ZYGOTE_LATER="1")
    try:
        thread, runs = in_thread(later, job(tmp_path, "napping", "nap"))
        wait_started(later, tmp_path / "napping.log")
        refused = later.launch(job(tmp_path, "refused", "exit3"))
        assert refused.lost is not None
        assert "a hazard after the first fork" in refused.lost
        thread.join(timeout=20)
        [napping] = runs
        assert napping.ok is False  # no report, but it ran to its end: not killed, not lost
        assert napping.lost is None
        assert napping.returncode == 0
        replaced = later.launch(job(tmp_path, "replaced", "exit3"))
        assert replaced.returncode == 3  # the first fork of a fresh zygote
    finally:
        later.stop_all()


def test_after_stop_all_no_job_starts(launcher: ZygoteLauncher, tmp_path: Path) -> None:
    assert launcher.launch(job(tmp_path, "before", "exit3")).returncode == 3
    launcher.stop_all()
    after = launcher.launch(job(tmp_path, "after", "exit3"))
    assert after.lost == "the run is stopping; no new job starts"
    assert not (tmp_path / "zygote-restart-1.log").exists()  # no zygote started again


def test_a_failed_start_is_remembered(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    dead = ZygoteLauncher(
        env=dict(os.environ),
        log_path=tmp_path / "zygote.log",
        command=(sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x')"),
    )
    for name in ("one", "two"):
        with pytest.raises(LauncherBroken, match="could not start"):
            dead.launch(job(tmp_path, name, "exit3"))
    assert starts.read_text() == "x"


def test_stop_all_stops_running_children(launcher: ZygoteLauncher, tmp_path: Path) -> None:
    thread, runs = in_thread(launcher, job(tmp_path, "held", "sleep", timeout_s=60))
    wait_started(launcher, tmp_path / "held.log")
    started = time.monotonic()
    launcher.stop_all()
    thread.join(timeout=20)
    assert time.monotonic() - started < 10
    [held] = runs
    assert held.returncode == -15  # SIGTERM, through the one shutdown helper


def rank_job(tmp_path: Path, name: str, what: str, ranks: int) -> Job:
    return replace(job(tmp_path, name, what), ranks=ranks)


def test_a_distributed_job_forks_its_ranks_with_torchruns_environment(
    launcher: ZygoteLauncher, tmp_path: Path
) -> None:
    run = launcher.launch(rank_job(tmp_path, "ok", "ranks-ok", 3))
    assert run.returncode == 0
    assert run.failed_ranks == "rank(s) 1, 2 of 3 wrote no report"  # the fake writes none
    assert (tmp_path / "ok.log").read_text().split()[-1] == "0"
    assert (tmp_path / "ok.rank2.log").read_text().split()[-1] == "2"


def test_a_crashed_rank_ends_the_job_at_once_naming_the_rank(
    launcher: ZygoteLauncher, tmp_path: Path
) -> None:
    started = time.monotonic()
    run = launcher.launch(replace(rank_job(tmp_path, "ranks", "ranks", 3), timeout_s=60))
    assert time.monotonic() - started < 15  # the others were stopped, not waited for
    assert run.failed_ranks is not None
    assert run.failed_ranks.startswith("rank 1 of 3 was killed by SIGSEGV")
    assert "rank 0" not in run.failed_ranks  # stopped by the launcher, not failed by itself
    assert not run.ok
    assert "rank 1 of 3 was killed by SIGSEGV" in run.failure()
    lines = [
        next(line.split() for line in (tmp_path / name).read_text().splitlines() if "rank" in line)
        for name in ("ranks.log", "ranks.rank2.log")
    ]
    assert [words[1] for words in lines] == ["0", "2"]
    assert lines[0][5] == lines[1][5]  # one rendezvous port for the job
    assert lines[0][6] == "127.0.0.1"


def test_every_answer_has_a_handler() -> None:
    assert set(HANDLERS) == set(ANSWER_FIELDS)


@pytest.mark.slow
def test_the_real_zygote_runs_a_worker_job(tmp_path: Path) -> None:
    from harness.core.axes import Format, Layout
    from harness.core.cell import Cell
    from harness.run.artifacts import ArtifactStore
    from harness.run.jobs import JobFactory

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


COMPUTING_ZYGOTE = """
import sys, torch
from harness.worker.fork_server import preload, serve

def load():
    watch = preload()
    torch.ones(2).add(1)  # what a zygote must never do
    return watch

sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer, load=load))
"""


@pytest.mark.slow
def test_a_zygote_that_computed_refuses_to_fork(tmp_path: Path) -> None:
    computing = ZygoteLauncher(
        env=worker_env(()),
        log_path=tmp_path / "zygote.log",
        command=(sys.executable, "-c", COMPUTING_ZYGOTE),
    )
    try:
        refused = computing.launch(job(tmp_path, "first", "unused.json"))
    finally:
        computing.stop_all()
    assert refused.lost is not None
    assert "ran a tensor computation" in refused.lost
    assert "ones" in refused.lost
    assert "refusing to fork" in (tmp_path / "zygote.log").read_text()


def test_a_module_the_zygote_could_not_keep_is_said_once_and_never_asked_for_again(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    launcher = ZygoteLauncher(
        env={},
        log_path=tmp_path / "zygote.log",
        python="python",
        preload_modules=("mymodels", "other.models", "mymodels"),
        notify=said.append,
    )
    assert launcher.command == (
        "python", "-m", "harness.worker", "--zygote",
        "--import", "mymodels", "--import", "other.models",
    )  # fmt: skip
    message: NotPreloaded = {"event": "not_preloaded", "module": "mymodels", "reason": "why"}
    zygote = _Zygote(
        process=None,  # type: ignore[arg-type]  # not used by this handler
        log_path=tmp_path / "zygote.log",
        not_preloaded=launcher._on_not_preloaded,
    )
    for _ in range(2):  # a restarted zygote would say it again
        HANDLERS["not_preloaded"](zygote, message)
    assert said == [
        "ckpt-matrix: note: mymodels is imported by each worker, not once by the zygote: "
        "importing it there made forking unsafe (why); the cells run the same, each worker "
        "paying that import"
    ]
    assert launcher.command[-2:] == ("--import", "other.models")
    assert "mymodels" not in launcher.command
