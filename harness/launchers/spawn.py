"""The spawn launcher: a fresh interpreter per job, the strongest isolation.

Every job runs in a new session (its own process group), with stdin closed, stdout and stderr
captured to its log, and a timeout; shutdown goes through :mod:`harness.launchers.shutdown`.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

from harness.core.jobs import Job, JobRun
from harness.launchers.protocol import (
    finished_run,
    prepare,
    rank_failures,
    stopping_run,
    tail,
    torchrun_argv,
    torchrun_failures,
    worker_args,
)
from harness.launchers.shutdown import GRACE_S, popen_target, shutdown_groups


@dataclass
class SpawnLauncher:
    grace_s: float = GRACE_S
    _live: set[subprocess.Popen[bytes]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False  # stop_all was called: no new job starts

    def launch(self, job: Job) -> JobRun:
        prepare(job)
        started = time.monotonic()
        timed_out = False
        with self._lock:
            if self._closed:
                return stopping_run(job)
        argv = job.argv
        args = worker_args(job.argv)
        if job.ranks >= 1 and args is not None:  # a distributed job: torchrun starts its ranks
            argv = torchrun_argv(job.argv[0], job.ranks, args)
        with open(job.log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                env=dict(job.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            with self._lock:
                self._live.add(proc)
                if self._closed:  # stopped while it started: stop it with the others
                    proc.kill()
            try:
                proc.wait(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                shutdown_groups([popen_target(proc)], self.grace_s)
            except BaseException:
                shutdown_groups([popen_target(proc)], self.grace_s)
                raise
            finally:
                with self._lock:
                    self._live.discard(proc)
        failed_ranks = None
        if job.ranks > 1 and proc.returncode != 0 and not timed_out:
            failed_ranks = rank_failures(torchrun_failures(tail(job.log_path)), job.ranks)
        return finished_run(
            job,
            returncode=proc.returncode,
            timed_out=timed_out,
            started=started,
            failed_ranks=failed_ranks,
        )

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._live)

    def stop_all(self) -> None:
        """Stop every running job (on Ctrl-C: the children are in their own sessions and do not
        receive the terminal's SIGINT)."""
        with self._lock:
            self._closed = True
            live = list(self._live)
        shutdown_groups([popen_target(proc) for proc in live], self.grace_s)
