"""The zygote launcher: worker jobs forked from one process that has imported torch.

A fresh interpreter per job (``SpawnLauncher``) spends nearly all of a CPU cell's time importing
torch (``benchmarks/cell_overhead.py``); a child forked from a process that already has torch
imported starts in tens of milliseconds. ``ZygoteLauncher`` starts that process
(``python -m harness.worker --zygote``, see ``harness.worker.zygote`` for why it is safe) and
asks it for one child per job. Each child still starts its own session, gets the job's
environment (``CUDA_VISIBLE_DEVICES`` included) before CUDA initialises in it, and writes the same
report as a spawned worker; timeouts escalate SIGTERM then SIGKILL to its process group.

The orchestrator itself never imports torch: only the zygote does. ``SpawnLauncher`` stays the
default for certification (each job in a pristine interpreter); the zygote is for faster runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.runner import Job, JobRun, finished_run, tail

WORKER_MODULE = ("-m", "harness.worker")


class ZygoteError(RuntimeError):
    """The zygote could not start, or died; the message says what it printed."""


@dataclass
class _Pending:
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    pid: int | None = None
    returncode: int | None = None
    error: str | None = None


class ZygoteLauncher:
    """Runs worker jobs as children of one zygote process; safe to call from several threads."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        log_path: Path,
        python: str = sys.executable,
        grace_s: float = 5.0,
        command: tuple[str, ...] | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.python = python
        self.grace_s = grace_s
        # the zygote's own command line (tests start one that serves fake jobs)
        self.command = command or (python, *WORKER_MODULE, "--zygote")
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._reader: threading.Thread | None = None

    # -- the zygote ----------------------------------------------------------------------------

    def _zygote(self) -> subprocess.Popen[bytes]:
        """The running zygote, started on first use (under ``self._lock``)."""
        if self._process is not None and self._process.poll() is None:
            return self._process
        if self._process is not None:
            raise ZygoteError(self._died())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self._reader = threading.Thread(
            target=self._read_answers, args=(self._process,), name="zygote-answers", daemon=True
        )
        self._reader.start()
        return self._process

    def _died(self) -> str:
        code = None if self._process is None else self._process.poll()
        return (
            f"the zygote ({' '.join(self.command)}) exited with code {code}; "
            f"its log {self.log_path} ends: {tail(self.log_path, 1500).strip() or '(empty)'}"
        )

    def _read_answers(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            message: dict[str, Any] = json.loads(line)
            with self._lock:
                pending = self._pending.get(int(message["id"]))
            if pending is None:
                continue
            if "pid" in message:
                pending.pid = int(message["pid"])
                pending.started.set()
            elif "returncode" in message:
                pending.returncode = int(message["returncode"])
                pending.ended.set()
            else:
                pending.error = str(message.get("error"))
                pending.started.set()
                pending.ended.set()
        process.wait()
        with self._lock:  # the zygote is gone: nothing still pending will ever be answered
            orphans = list(self._pending.values())
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for pending in orphans:
            pending.error = pending.error or self._died()
            pending.started.set()
            pending.ended.set()

    # -- the Launcher protocol -----------------------------------------------------------------

    def launch(self, job: Job) -> JobRun:
        if tuple(job.argv[1:3]) != WORKER_MODULE:
            raise ValueError(
                f"{job.name}: the zygote runs only worker jobs ({' '.join(WORKER_MODULE)} ...), "
                f"not {' '.join(job.argv)}; use SpawnLauncher for other commands"
            )
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        job.report_path.unlink(missing_ok=True)
        request = {
            "args": list(job.argv[3:]),
            "env": dict(job.env),
            "log": str(job.log_path),
        }
        pending = _Pending()
        started = time.monotonic()
        with self._lock:
            process = self._zygote()
            self._next_id += 1
            job_id = self._next_id
            self._pending[job_id] = pending
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps({"id": job_id, **request}).encode() + b"\n")
                process.stdin.flush()
            except (OSError, ValueError):  # a broken or already closed pipe: the zygote is gone
                del self._pending[job_id]
                raise ZygoteError(self._died()) from None
        timed_out = False
        try:
            if not pending.ended.wait(timeout=job.timeout_s):
                timed_out = True
                self._shutdown(pending)
        except BaseException:
            self._shutdown(pending)
            raise
        finally:
            with self._lock:
                self._pending.pop(job_id, None)
        if pending.error is not None:
            raise ZygoteError(f"{job.name}: {pending.error}")
        return finished_run(
            job, returncode=pending.returncode, timed_out=timed_out, started=started
        )

    def _shutdown(self, pending: _Pending) -> None:
        """SIGTERM the child's process group, wait ``grace_s``, then SIGKILL it."""
        pending.started.wait(timeout=self.grace_s)
        if pending.pid is None:
            return
        for sig, wait_s in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, self.grace_s)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pending.pid, sig)
            if pending.ended.wait(timeout=wait_s):
                return

    def stop_all(self) -> None:
        """Stop every running job, then the zygote."""
        with self._lock:
            live = list(self._pending.values())
            process = self._process
        for pending in live:
            if pending.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pending.pid, signal.SIGKILL)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=self.grace_s)  # it closes the pipes
