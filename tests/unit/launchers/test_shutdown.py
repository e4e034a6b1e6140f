"""One shutdown for every launcher: SIGTERM, one grace period for all, SIGKILL what is left."""

from __future__ import annotations

import subprocess
import sys
import time

from harness.launchers.shutdown import popen_target, shutdown_groups

IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
SLEEPS = "import time; print('ready', flush=True); time.sleep(60)"


def start(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # its signal handlers are in place
    return proc


def test_term_then_kill_within_one_grace_period_for_all() -> None:
    polite, stubborn = start(SLEEPS), start(IGNORES_TERM)
    started = time.monotonic()
    shutdown_groups([popen_target(polite), popen_target(stubborn)], grace_s=1.0)
    took = time.monotonic() - started
    for proc in (polite, stubborn):
        assert proc.stdout is not None
        proc.stdout.close()
    assert polite.returncode == -15
    assert stubborn.returncode == -9
    assert 1.0 <= took < 4.0  # one grace period in all, not one per process


def test_a_group_already_gone_is_no_error() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    done.wait()
    shutdown_groups([popen_target(done)], grace_s=0.1)
    assert done.returncode == 0
