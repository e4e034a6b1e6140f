"""The orchestrator stopped from outside: SIGINT and SIGTERM end a run cleanly, SIGKILL at any
point loses nothing, and ``--resume`` finishes either with the cell set of an uninterrupted run.
Real processes, real signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.core.results import read_results

from .worker.test_faults import PLAIN

SCENARIO = PLAIN  # 13 cells of one model, two layouts, six recipes
HANG = "save=dp[cpu]-load=dp[cpu]-fmt=weights-recipe=as_saved"


def ckpt(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cells_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if data.get("kind") == "cell":
            ids.append(data["id"])
    return ids


def left_behind(token: str) -> list[int]:
    """Processes still carrying this test's token in their environment (workers, a zygote)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def settle(token: str, within_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (alive := left_behind(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, list[str], dict[str, str]]:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    listed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "list", "--scenarios", str(scenario)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    env = {**os.environ, "CKPT_TEST_TOKEN": uuid.uuid4().hex, "CI": "1"}
    env.pop("CKPT_MATRIX_FAULT", None)
    return scenario, tmp_path / "results.jsonl", listed, env


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigint_and_sigterm_stop_workers_and_leave_a_file_that_resumes(
    setup: tuple[Path, Path, list[str], dict[str, str]], signum: signal.Signals
) -> None:
    scenario, out, listed, env = setup
    hang = [{"kind": "hang", "match": HANG, "role": "load"}]
    run = ckpt(
        "run", "--scenarios", str(scenario), "--out", str(out), "--jobs", "2",
        env={**env, "CKPT_MATRIX_FAULT": json.dumps(hang)},
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while len(cells_in(out)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(cells_in(out)) >= 4, "the run did not get going"
    run.send_signal(signum)
    assert run.wait(timeout=60) == 128 + signum
    assert settle(env["CKPT_TEST_TOKEN"]) == []  # the hanging worker and the zygote are gone
    results = read_results(out)
    assert results.ends[-1]["interrupted"] == signum.name
    assert not results.warnings  # no torn line
    done = [r.id for r in results.results]
    assert HANG not in " ".join(done)
    resumed = ckpt("run", "--scenarios", str(scenario), "--out", str(out), "--resume", env=env)
    assert resumed.wait(timeout=300) == 0
    final = [r.id for r in read_results(out).results]
    assert sorted(final) == sorted(listed)
    assert final[: len(done)] == done  # nothing recorded was lost or rewritten


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_whole_matrix(
    setup: tuple[Path, Path, list[str], dict[str, str]],
) -> None:
    scenario, out, listed, env = setup
    tried = []
    for seed in (0, 13, 19):  # kill points: before any cell line, after 4 cells, after 10
        out.unlink(missing_ok=True)
        rng = random.Random(seed)
        after = 0 if seed == 0 else rng.randint(0, len(listed) - 1)
        run = ckpt("run", "--scenarios", str(scenario), "--out", str(out), "--jobs", "2", env=env)
        if after == 0:
            time.sleep(rng.uniform(0.0, 1.0))  # while the zygote starts, before any line
        else:
            deadline = time.monotonic() + 120
            while len(cells_in(out)) < after and time.monotonic() < deadline:
                time.sleep(0.02)
        run.kill()
        run.wait()
        before = cells_in(out)
        tried.append((seed, after, len(before)))
        assert settle(env["CKPT_TEST_TOKEN"]) == [], seed
        args = ["run", "--scenarios", str(scenario), "--out", str(out), "--resume"]
        assert ckpt(*args, env=env).wait(timeout=300) == 0, seed
        final = cells_in(out)
        assert sorted(final) == sorted(listed), seed  # the same cell set, each once
        assert final[: len(before)] == before, seed
    assert [point for _, point, _ in tried] == [0, 4, 10], tried
