"""The zygote: a process that has imported torch, never computes, and forks one child per job.

``python -m harness.worker --zygote`` reads one JSON request per line on stdin and answers on
stdout, one JSON line per event:

- request ``{"id": N, "args": [SPEC.json], "env": {...}, "log": PATH}``;
- answer ``{"id": N, "pid": P}`` once the child exists, then ``{"id": N, "returncode": R}`` when
  it has ended (R negative for a signal, as ``subprocess`` reports it);
- answer ``{"id": N, "error": TEXT}`` when no child could be started.

Why it is safe, and what it must never do:

- The zygote never runs a torch operation: once a process has computed anything, children
  forked from it hang at their first operation (OpenMP after fork). It only imports.
- It never touches CUDA: CUDA reads ``CUDA_VISIBLE_DEVICES`` when a process first initialises
  it, so each child sets its own environment right after the fork and only then, in its job,
  initialises CUDA with the devices it was given. A child forked from a process that had
  initialised CUDA could not use CUDA at all.
- It starts no threads of its own (forking a threaded process can copy a held lock); it waits
  for requests and for its children in one loop. ``import torch`` itself leaves one helper
  thread besides the main one (seen here, torch 2.14.1; torchvision adds none); children forked
  after it ran every cell of the CPU matrix with the outcomes of spawned workers.

Each child starts a new session (its own process group, which the parent signals on timeout),
points stdin at /dev/null and stdout and stderr at the job's log, replaces its environment with
the job's, and runs the same ``main`` as ``python -m harness.worker SPEC.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

POLL_S = 0.02  # how often the loop looks for ended children while no request arrives


Run = Callable[[list[str]], int]


def preload() -> None:
    """Everything a job imports that is slow to import, so that children start with it:
    torch, the worker, and torchvision where installed (it imports torch._dynamo, ~1.5 s, which
    every resnet job would pay again). Imports only: nothing here runs a torch operation."""
    import torch  # noqa: F401

    import harness.worker.main  # noqa: F401

    with contextlib.suppress(ImportError):
        import torchvision  # noqa: F401


def run_worker(args: list[str]) -> int:
    """What a child runs: the same as ``python -m harness.worker ARGS``."""
    from harness.worker.__main__ import main

    return main(args)


def serve(
    requests: IO[bytes],
    answers: IO[bytes],
    *,
    run: Run = run_worker,
    load: Callable[[], None] = preload,
) -> int:
    """Serve requests until stdin closes and every child has ended. ``run`` and ``load`` are
    what a child runs and what the zygote imports first (replaced in the launcher's tests)."""
    load()
    children: dict[int, int] = {}  # pid -> request id
    buffer = b""
    open_input = True
    while open_input or children:
        if open_input:
            ready, _, _ = select.select([requests], [], [], POLL_S)
            if ready:
                chunk = os.read(requests.fileno(), 1 << 16)
                if not chunk:
                    open_input = False  # the parent is gone or done: finish the children
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        _start(json.loads(line), children, requests, answers, run)
        else:
            select.select([], [], [], POLL_S)
        _reap(children, answers)
    return 0


def _answer(answers: IO[bytes], message: dict[str, Any]) -> None:
    answers.write(json.dumps(message).encode() + b"\n")
    answers.flush()


def _start(
    request: dict[str, Any],
    children: dict[int, int],
    requests: IO[bytes],
    answers: IO[bytes],
    run: Run,
) -> None:
    job_id = int(request["id"])
    try:
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        _answer(answers, {"id": job_id, "error": f"cannot open the job's log: {exc}"})
        return
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(log_fd)
        _answer(answers, {"id": job_id, "error": f"fork failed: {exc}"})
        return
    if pid == 0:  # the child: never returns
        _child(request, log_fd, requests, answers, run)
    os.close(log_fd)
    children[pid] = job_id
    _answer(answers, {"id": job_id, "pid": pid})


def _child(
    request: dict[str, Any], log_fd: int, requests: IO[bytes], answers: IO[bytes], run: Run
) -> None:
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in {devnull, log_fd, requests.fileno(), answers.fileno()} - {0, 1, 2}:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        code = run(list(request["args"]))
    except BaseException:  # everything ends here: the child must not return into the loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(children: dict[int, int], answers: IO[bytes]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job_id = children.pop(pid, None)
        if job_id is not None:
            _answer(answers, {"id": job_id, "returncode": os.waitstatus_to_exitcode(status)})
