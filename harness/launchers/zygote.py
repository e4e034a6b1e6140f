"""The zygote launcher (the default): worker jobs forked from one process that has imported torch.

A fresh interpreter per job (``SpawnLauncher``) spends nearly all of a CPU cell's time importing
torch (``benchmarks/bench_matrix.py``); a child forked from a process that already has torch
imported starts in milliseconds. ``ZygoteLauncher`` starts that process
(``python -m harness.worker --zygote``; ``harness.worker.fork_server`` says why it is safe) and asks
it for one child per job. Each child starts its own session, gets the job's environment
(``CUDA_VISIBLE_DEVICES`` included) before CUDA initialises in it, and writes the same report as a
spawned worker; timeouts and Ctrl-C stop it through ``harness.launchers.shutdown``.

Nothing is stranded when the zygote misbehaves: a malformed answer or the zygote's death ends
every job it held at once, as a lost ``JobRun`` naming the cause (the zygote's exit status and
log tail), their children are stopped, and the zygote is started again, once. A zygote that
refuses to fork (its fork guard) answers every request ``failed``, finishes the children it has,
and is replaced likewise. A second failure raises ``LauncherBroken``: the run stops with that
message. A zygote that cannot even start (no torch, say) raises it at once.

The zygote also imports the user's model modules the run's cells name (``preload_modules``), so
that no child imports transformers again. One whose import made forking unsafe is left to the
children (the zygote says ``not_preloaded`` and starts afresh without it); the launcher tells the
user once, in one line (``notify``), and never asks a restarted zygote for it again.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.jobs import Job, JobRun
from harness.core.zygote_messages import (
    Ended,
    Failed,
    NotPreloaded,
    ProtocolError,
    Ready,
    Started,
    StartRequest,
    Stopping,
    encode,
    parse_answer,
)
from harness.launchers.protocol import (
    LauncherBroken,
    finished_run,
    free_port,
    prepare,
    rank_failures,
    stopping_run,
    tail,
    worker_args,
    worker_argv,
)
from harness.launchers.shutdown import GRACE_S, Target, popen_target, shutdown_groups

RANK_POLL_S = 0.05  # how often a distributed job looks for a failed rank
START_TIMEOUT_S = 300.0  # for the zygote's imports (torch, torchvision) on a slow, busy machine
RESTARTS = 1  # a zygote that dies is started again this many times in one run
# The environment variable that leaves a user's model module to each worker's own import.
PRELOAD_MODELS = "CKPT_MATRIX_PRELOAD_MODELS"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class _Pending:
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    pid: int | None = None
    returncode: int | None = None
    lost: str | None = None  # no answer will come: why

    def target(self) -> Target | None:
        return None if self.pid is None else Target(pgid=self.pid, wait=self.ended.wait)


@dataclass
class _Zygote:
    """One zygote process, the jobs it holds, and why it can take no more (once it can't)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    not_preloaded: Callable[[NotPreloaded], None] = lambda _: None
    ready: threading.Event = field(default_factory=threading.Event)  # ready, or gone first
    was_ready: bool = False
    pending: dict[int, _Pending] = field(default_factory=dict)
    cause: str | None = None  # set once: why this zygote can take no more jobs
    refusing: bool = False  # it said it stops forking; it still finishes its children

    @property
    def usable(self) -> bool:
        return self.cause is None and self.process.poll() is None


class ZygoteLauncher:
    """Runs worker jobs as children of one zygote process; safe to call from several threads.
    The lock is never held while waiting for a job or for a zygote's start."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        log_path: Path,
        python: str = sys.executable,
        grace_s: float = GRACE_S,
        command: tuple[str, ...] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        preload_torchvision: bool = True,
        preload_distributed: bool = False,
        preload_modules: Sequence[str] = (),
        notify: Callable[[str], None] = say,
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path  # the first zygote's; a restarted one adds -restart-N
        self.grace_s = grace_s
        self.start_timeout_s = start_timeout_s
        self.notify = notify
        self.python = python
        flags: tuple[str, ...] = () if preload_torchvision else ("--no-torchvision",)
        flags += ("--distributed",) if preload_distributed else ()
        self._flags = flags
        self._modules = tuple(dict.fromkeys(preload_modules))
        self._not_preloaded: dict[str, str] = {}  # module -> why each child imports it
        # the zygote's own command line (tests start one that serves fake jobs)
        self._command = command
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._draining: list[_Zygote] = []  # refused to fork, still finishing children
        self._deaths: list[str] = []
        self._broken: str | None = None  # set once: no zygote will be started again
        self._closed = False  # stop_all was called: no new job starts
        self._next_id = 0
        self._readers: list[threading.Thread] = []

    # -- the zygote ----------------------------------------------------------------------------

    @property
    def command(self) -> tuple[str, ...]:
        """The next zygote's command line: without the modules an earlier one could not keep."""
        if self._command is not None:
            return self._command
        imports = [("--import", m) for m in self._modules if m not in self._not_preloaded]
        return worker_argv(self.python, "--zygote", *self._flags, *(a for i in imports for a in i))

    def _current(self) -> _Zygote:
        """The zygote to use, perhaps still starting: started on first use, started again once
        after a death (under ``self._lock``; waits for nothing)."""
        if self._broken is not None:
            raise LauncherBroken(self._broken)
        zygote = self._zygote
        if zygote is not None and (zygote.usable or not zygote.ready.is_set()):
            return zygote
        if zygote is not None and not zygote.was_ready:
            self._fail_start(zygote, zygote.cause or self._exit_text(zygote))
        if zygote is not None:
            cause = zygote.cause or self._exit_text(zygote)
            self._deaths.append(cause)
            self._zygote = None
            if zygote.refusing and zygote.process.poll() is None:
                self._close_input(zygote)  # it finishes the children it has, then exits
                self._draining.append(zygote)
            else:
                self._retire(zygote, cause)
        if len(self._deaths) > RESTARTS:
            self._broken = (
                f"the zygote failed {len(self._deaths)} times, so the run stops: "
                + "; then ".join(self._deaths)
                + ". Resume the run, or use the spawn launcher"
            )
            raise LauncherBroken(self._broken)
        self._zygote = self._start(len(self._deaths))
        return self._zygote

    def _start(self, restarts: int) -> _Zygote:
        log_path = self.log_path
        if restarts:
            log_path = log_path.with_name(f"{log_path.stem}-restart-{restarts}{log_path.suffix}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        zygote = _Zygote(process=process, log_path=log_path, not_preloaded=self._on_not_preloaded)
        reader = threading.Thread(
            target=self._read_answers, args=(zygote,), name="zygote-answers", daemon=True
        )
        reader.start()
        self._readers.append(reader)
        return zygote

    def _fail_start(self, zygote: _Zygote, cause: str) -> None:
        """A zygote that never became ready: no restart would do better (under the lock)."""
        self._retire(zygote, cause)
        if self._broken is None:
            modules = [m for m in self._modules if m not in self._not_preloaded]
            hint = (
                f"; it imports your model's module too ({', '.join(modules)}): "
                f"{PRELOAD_MODELS}=0 leaves that to each worker"
                if modules
                else ""
            )
            self._broken = (
                f"the zygote ({' '.join(self.command)}) could not start: {cause}. Check that "
                f"torch imports in this interpreter, or use the spawn launcher{hint}"
            )
        raise LauncherBroken(self._broken)

    def _on_not_preloaded(self, message: NotPreloaded) -> None:
        """A zygote left a module to its children: tell the user, once per module and run."""
        with self._lock:
            said = message["module"] in self._not_preloaded
            self._not_preloaded[message["module"]] = message["reason"]
        if not said:
            self.notify(
                f"ckpt-matrix: note: {message['module']} is imported by each worker, not once "
                f"by the zygote: importing it there made forking unsafe ({message['reason']}); "
                "the cells run the same, each worker paying that import"
            )

    def _exit_text(self, zygote: _Zygote) -> str:
        code = zygote.process.poll()
        status = "is still running" if code is None else f"exited with code {code}"
        log = tail(zygote.log_path, 1500).strip() or "(empty)"
        return f"the zygote {status}; its log {zygote.log_path} ends: {log}"

    @staticmethod
    def _close_input(zygote: _Zygote) -> None:
        with contextlib.suppress(OSError, ValueError):
            if zygote.process.stdin is not None:
                zygote.process.stdin.close()  # the zygote's cue to finish and exit

    def _retire(self, zygote: _Zygote, cause: str) -> None:
        """Mark the zygote unusable, end it, and end every job it held as lost with ``cause``
        (their children too, which would otherwise run on unseen). Idempotent."""
        if zygote.cause is None:
            zygote.cause = cause
        if zygote.process.returncode is None:
            shutdown_groups([popen_target(zygote.process)], 0.0)
        orphans = [p for p in zygote.pending.values() if not p.ended.is_set()]
        children = [Target(pgid=p.pid, wait=_gone(p.pid)) for p in orphans if p.pid is not None]
        for pending in orphans:
            pending.lost = pending.lost or zygote.cause
            pending.started.set()
            pending.ended.set()
        shutdown_groups(children, 0.0)

    def _read_answers(self, zygote: _Zygote) -> None:
        """Dispatch each answer; on a malformed one or the end of the stream, retire the zygote,
        so that no job waits for an answer that will not come."""
        assert zygote.process.stdout is not None
        cause: str | None = None
        lines = iter(zygote.process.stdout)
        try:
            for line in lines:
                message = parse_answer(line)
                HANDLERS[message["event"]](zygote, message)
        except ProtocolError as exc:
            cause = f"the zygote sent a malformed answer ({exc})"
        except Exception as exc:  # a bug here must not leave jobs waiting forever
            cause = f"the zygote's answers could not be read ({type(exc).__name__}: {exc})"
        if cause is not None:
            zygote.cause = zygote.cause or cause
            shutdown_groups([popen_target(zygote.process)], 0.0)
            for line in lines:  # what it said before it died: the pids of children it started
                with contextlib.suppress(ProtocolError):
                    message = parse_answer(line)
                    if message["event"] == "started":
                        _on_started(zygote, message)
        with contextlib.suppress(subprocess.TimeoutExpired):
            zygote.process.wait(timeout=self.grace_s)
        cause = f"{cause}; {self._exit_text(zygote)}" if cause else self._exit_text(zygote)
        zygote.cause = zygote.cause or cause
        zygote.ready.set()  # a launch waiting for its start sees the zygote gone
        with self._lock:
            self._retire(zygote, cause)
            for pipe in (zygote.process.stdin, zygote.process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    # -- the Launcher protocol -----------------------------------------------------------------

    def launch(self, job: Job) -> JobRun:
        args = worker_args(job.argv)
        if args is None:
            raise ValueError(
                f"{job.name}: the zygote runs only worker jobs ({' '.join(worker_argv('python'))}"
                f" ...), not {' '.join(job.argv)}; use SpawnLauncher for other commands"
            )
        prepare(job)
        requests = [
            StartRequest(id=0, args=list(args), env=env, log=str(job.rank_log(rank)))
            for rank, env in enumerate(rank_environments(job))
        ]
        pendings = [_Pending() for _ in requests]
        while True:
            with self._lock:
                if self._closed:
                    return stopping_run(job)
                zygote = self._current()
            if not zygote.ready.wait(timeout=self.start_timeout_s):
                with self._lock:
                    self._fail_start(zygote, f"it was not ready after {self.start_timeout_s:.0f} s")
            with self._lock:
                if not zygote.was_ready:
                    self._fail_start(zygote, zygote.cause or self._exit_text(zygote))
                if self._closed:
                    return stopping_run(job)
                if not zygote.usable:
                    continue  # it died since it was ready: the next _current restarts it
                started = time.monotonic()
                ids = self._submit(zygote, requests, pendings)
                break
        try:
            timed_out, culprits = self._wait(pendings, job.timeout_s)
        except BaseException:
            self._stop(pendings)
            raise
        finally:
            with self._lock:
                for job_id in ids:
                    zygote.pending.pop(job_id, None)
        lost = next((p.lost for p in pendings if p.lost is not None), None)
        failed = [(rank, pendings[rank].returncode) for rank in culprits]
        returncode = failed[0][1] if failed else pendings[0].returncode
        return finished_run(
            job,
            returncode=None if lost is not None else returncode,
            timed_out=timed_out,
            started=started,
            lost=lost,
            failed_ranks=rank_failures(failed, len(pendings)) if job.ranks > 1 else None,
        )

    def _submit(
        self, zygote: _Zygote, requests: list[StartRequest], pendings: list[_Pending]
    ) -> list[int]:
        """Send the requests, one per rank (under the lock); their ids."""
        ids = []
        for request, pending in zip(requests, pendings, strict=True):
            self._next_id += 1
            request["id"] = self._next_id
            ids.append(self._next_id)
            zygote.pending[self._next_id] = pending
        try:
            assert zygote.process.stdin is not None
            zygote.process.stdin.write(b"".join(encode(request) for request in requests))
            zygote.process.stdin.flush()
        except (OSError, ValueError):  # a broken or closed pipe: the zygote is gone
            with contextlib.suppress(subprocess.TimeoutExpired):
                zygote.process.wait(timeout=self.grace_s)
            self._retire(zygote, self._exit_text(zygote))
        return ids

    def _wait(self, pendings: list[_Pending], timeout_s: float) -> tuple[bool, list[int]]:
        """Until every rank has ended; once one fails, the others are stopped at once (a
        distributed job cannot go on without it). Whether the job timed out, and the ranks
        that failed by themselves."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [p for p in pendings if not p.ended.is_set()]
            culprits = [
                rank
                for rank, p in enumerate(pendings)
                if p.ended.is_set() and (p.lost is not None or p.returncode != 0)
            ]
            if not running or culprits:
                self._stop(running)
                return False, culprits
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop(running)
                for pending in running:
                    if pending.pid is None and pending.lost is None:
                        pending.lost = f"the zygote started no child for it in {timeout_s:.0f} s"
                return True, []
            running[0].ended.wait(timeout=min(left, RANK_POLL_S if len(pendings) > 1 else left))

    def _stop(self, pendings: list[_Pending]) -> None:
        """Stop the jobs' children (the one shutdown for every launcher); a request in flight
        gets its pid first, all within one grace period."""
        deadline = time.monotonic() + self.grace_s
        for pending in pendings:
            pending.started.wait(timeout=max(0.0, deadline - time.monotonic()))
        targets = [
            t for t in (p.target() for p in pendings if not p.ended.is_set()) if t is not None
        ]
        shutdown_groups(targets, self.grace_s)

    def stop_all(self) -> None:
        """Stop every running job, then the zygotes; no job starts after this."""
        with self._lock:
            self._closed = True
            zygotes = [z for z in (self._zygote, *self._draining) if z is not None]
            live = [p for z in zygotes for p in z.pending.values()]
        self._stop(live)
        for zygote in zygotes:
            self._close_input(zygote)
        shutdown_groups([popen_target(z.process) for z in zygotes], self.grace_s)
        for reader in self._readers:
            reader.join(timeout=self.grace_s)  # it closes the pipes


def rank_environments(job: Job) -> list[dict[str, str]]:
    """Each rank's environment: the job's, plus what torchrun would set, so that
    ``init_process_group`` joins the ranks through PyTorch's own env:// rendezvous on a free
    port of this job's. A plain job (``ranks`` 0) is one process with the job's environment."""
    if job.ranks < 1:
        return [dict(job.env)]
    port = str(free_port())
    return [
        {
            **job.env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(job.ranks),
            "LOCAL_WORLD_SIZE": str(job.ranks),
            "GROUP_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        for rank in range(job.ranks)
    ]


def _gone(pid: int) -> Callable[[float], bool]:
    """Wait for a process that is not this one's child (a child of a dead zygote) to be gone."""

    def wait(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # the pid was reused by another user's process
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    return wait


def _on_ready(zygote: _Zygote, _: Ready) -> None:
    zygote.was_ready = True
    zygote.ready.set()


def _on_not_preloaded(zygote: _Zygote, message: NotPreloaded) -> None:
    zygote.not_preloaded(message)


def _on_started(zygote: _Zygote, started: Started) -> None:
    pending = zygote.pending.get(started["id"])
    if pending is not None:
        pending.pid = started["pid"]
        pending.started.set()


def _on_ended(zygote: _Zygote, ended: Ended) -> None:
    pending = zygote.pending.get(ended["id"])
    if pending is not None:
        pending.returncode = ended["returncode"]
        pending.started.set()
        pending.ended.set()


def _on_failed(zygote: _Zygote, failed: Failed) -> None:
    pending = zygote.pending.get(failed["id"])
    if pending is not None:
        pending.lost = f"the zygote could not start it: {failed['error']}"
        pending.started.set()
        pending.ended.set()


def _on_stopping(zygote: _Zygote, stopping: Stopping) -> None:
    zygote.refusing = True
    zygote.cause = f"the zygote stopped forking: {stopping['reason']}"


# One handler per event of harness.core.zygote_messages.ANSWER_FIELDS (a test keeps them equal).
HANDLERS: dict[str, Callable[[_Zygote, Any], None]] = {
    "ready": _on_ready,
    "not_preloaded": _on_not_preloaded,
    "started": _on_started,
    "ended": _on_ended,
    "failed": _on_failed,
    "stopping": _on_stopping,
}
