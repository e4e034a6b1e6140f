"""Work folders: a killed run's temporary folder is removed by the next run, and nothing else;
a given folder is held by one run at a time and loses only what an earlier run created."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.run import workdirs
from harness.run.workdirs import MARKER, OWNER, WorkdirError, clean_stale, work_folder

HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_only_this_hosts_unlocked_folders_are_stale(tmp_path: Path) -> None:
    host = socket.gethostname()
    killed, live, elsewhere, foreign = (
        tmp_path / f"ckpt-matrix-{name}" for name in ("killed", "live", "elsewhere", "foreign")
    )
    for folder, owner in ((killed, host), (live, host), (elsewhere, "another-host")):
        folder.mkdir()
        (folder / OWNER).write_text(f"{owner} 1\n")
    foreign.mkdir()  # no owner file: not one this harness made
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(live / OWNER)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert clean_stale(tmp_path) == [killed]
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert live.exists()
    assert elsewhere.exists()
    assert foreign.exists()


def test_a_temporary_folder_is_held_then_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with work_folder(None) as made:
        assert (made / OWNER).read_text().split() == [socket.gethostname(), str(os.getpid())]
        assert clean_stale(tmp_path) == []  # held: not stale
    assert not made.exists()


def test_a_given_folder_loses_only_what_a_run_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = tmp_path / "work"
    (given / "artifacts").mkdir(parents=True)
    (given / "artifacts" / "mine.ckpt").write_text("the user's")
    with work_folder(given):
        (given / "cells").mkdir()  # what this run made
        (given / "rerun-1").mkdir()
    marker = json.loads((given / MARKER).read_text())
    assert "artifacts" not in marker["created"]
    assert "cells" in marker["created"]
    with work_folder(given):
        assert (given / "artifacts" / "mine.ckpt").exists()  # the user's folder stays
        assert not (given / "cells").exists()
        assert not (given / "rerun-1").exists()
    assert "removing" in capsys.readouterr().err


def test_a_run_that_keeps_saves_loads_the_earlier_runs_checkpoints(tmp_path: Path) -> None:
    given = tmp_path / "work"
    with work_folder(given):  # the saving run (under one torch)
        (given / "artifacts").mkdir()
        (given / "artifacts" / "saved.pt").write_text("saved")
        (given / "cells").mkdir()
    with work_folder(given, keep=("artifacts",)):  # the loading run (under another)
        assert (given / "artifacts" / "saved.pt").read_text() == "saved"
        assert not (given / "cells").exists()  # the rest is cleared as ever
    with work_folder(given):  # without keep, the artifacts the first run made go
        assert not (given / "artifacts").exists()


def test_two_runs_never_share_a_given_folder(tmp_path: Path) -> None:
    given = tmp_path / "work"
    with (
        work_folder(given),
        pytest.raises(WorkdirError, match="another run is using it"),
        work_folder(given),
    ):
        pass
    assert workdirs.PREFIX == "ckpt-matrix-"
