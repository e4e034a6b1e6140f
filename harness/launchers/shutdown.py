"""Stopping jobs, in one place for every launcher: SIGTERM to each job's process group, one grace
period for all of them together, then SIGKILL to the groups still there.

A job's process leads its own session (spawned with ``start_new_session``, or ``setsid`` after
the zygote forks it), so its group id is its pid and the signal reaches everything it started.
What "ended" means differs by launcher (a ``Popen`` to wait on, an event set by the zygote's
reader), so each target brings its own ``wait``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

GRACE_S = 5.0  # between SIGTERM and SIGKILL
KILL_WAIT_S = 5.0  # for the exit to be seen after SIGKILL


@dataclass(frozen=True)
class Target:
    pgid: int
    wait: Callable[[float], bool]  # wait up to N seconds for the process to end; True if it did


def popen_target(proc: subprocess.Popen[bytes]) -> Target:
    """A process this one started (its own session): ended when ``wait`` reaps it."""

    def wait(timeout_s: float) -> bool:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    return Target(pgid=proc.pid, wait=wait)


def shutdown_groups(targets: Sequence[Target], grace_s: float = GRACE_S) -> None:
    """SIGTERM every target's group, wait up to ``grace_s`` in all, SIGKILL the ones left."""
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = [t for t in targets if not t.wait(max(0.0, deadline - time.monotonic()))]
    if not alive:
        return
    _signal(alive, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    for target in alive:
        target.wait(max(0.0, deadline - time.monotonic()))


def _signal(targets: Sequence[Target], sig: signal.Signals) -> None:
    for target in targets:
        try:
            os.killpg(target.pgid, sig)
        except ProcessLookupError:
            # no such group: gone, or a forked child that has not called setsid yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target.pgid, sig)
        except PermissionError:  # the id was reused by another user's process
            pass
