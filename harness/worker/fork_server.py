"""The zygote: a process that has imported torch, never computes, and forks one child per job.

``python -m harness.worker --zygote`` reads one request per line on stdin and answers on stdout,
one line per event (``harness.core.zygote_messages`` has the types): ``ready`` once its imports are
done, then ``started`` and ``ended`` for each job, ``failed`` when no child could be started, and
``stopping`` when it refuses to fork any more.

Why it is safe, and what it must never do (``fork_hazard`` checks both before every fork and,
if either ever happened, the zygote refuses to fork, says why and exits):

- It never runs a torch operation: once a process has computed anything, children forked from
  it can hang at their first operation (OpenMP after fork). It only imports. A
  ``TorchFunctionMode`` watches it from before the imports on: any torch function that takes or
  returns a tensor counts as computing, but for torch's own modules computing on small tensors
  as they are imported (``torch_import_work``: some releases do). A new thread (a thread
  pool started) counts too.
- It never touches CUDA: CUDA reads ``CUDA_VISIBLE_DEVICES`` when a process first initialises
  it, so each child sets its own environment right after the fork and only then, in its job,
  initialises CUDA with the devices it was given. A child forked from a process that had
  initialised CUDA could not use CUDA at all (``torch.cuda.is_initialized()`` is checked).
- It starts no threads of its own (forking a threaded process can copy a held lock); it waits
  for requests and for its children in one loop.

A user's model module (``package.module`` of ``package.module:factory``) is imported here too,
last, under the same watch, so that children do not import it (and transformers, say) again.
Nothing of it is built. A module that raises is left to the workers, which report it as they
would; a module after whose import forking would be unsafe (it computed, started a thread,
initialised CUDA or asked for its devices) cannot be un-imported: the zygote says so (stderr,
and a ``not_preloaded`` answer) and executes itself afresh without it (``start_afresh``), and
each child imports it.

Each child starts a new session (its own process group, which the parent signals on timeout),
points stdin at /dev/null and stdout and stderr at the job's log, leaves the watch, replaces its
environment with the job's, and runs the same job as ``python -m harness.worker SPEC.json``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

from harness.core.zygote_messages import (
    Answer,
    ProtocolError,
    StartRequest,
    encode,
    parse_request,
)
from harness.worker import faults
from harness.worker.job import orchestrator_gone

POLL_S = 0.02  # how often the loop looks for ended children while no request arrives
REFUSED_EXIT = 3  # the zygote's exit code after it refused to fork

Run = Callable[[list[str]], int]


def fork_hazard(
    *,
    cuda_initialized: bool,
    computed: str | None,
    threads: int,
    threads_at_start: int,
    cuda_queried: str | None = None,
) -> str | None:
    """Why forking now would be unsafe, or None. Pure: the zygote gathers the facts."""
    if cuda_initialized:
        return (
            "CUDA was initialised in the zygote; its children could not use CUDA with their own "
            "CUDA_VISIBLE_DEVICES"
        )
    if cuda_queried is not None:
        return (
            f"the zygote asked torch for the CUDA devices ({cuda_queried}); it sees none of a "
            "job's devices, and asking starts CUDA's driver, which a forked child cannot use"
        )
    if computed is not None:
        return (
            f"the zygote ran a tensor computation ({computed}); children forked after one can "
            "hang at their first operation"
        )
    if threads > threads_at_start:
        return (
            f"the zygote has {threads} threads, {threads_at_start} after its imports; forking a "
            "threaded process can copy a held lock into the child"
        )
    return None


def thread_count() -> int:
    return len(thread_ids()) or 1


def thread_ids() -> frozenset[int]:
    """The ids of this process's threads (empty without /proc, as on macOS: the thread check is
    not available there)."""
    try:
        return frozenset(int(task.name) for task in Path("/proc/self/task").iterdir())
    except (OSError, ValueError):
        return frozenset()


@dataclass
class Watch:
    """What the zygote has done that would make a fork unsafe."""

    computed: str | None = None
    cuda_queried: str | None = None  # where torch.cuda.is_available() or device_count() was called
    threads_at_start: int = 1
    # the threads there after the imports, by id: a new one counts even where another ended
    thread_ids_at_start: frozenset[int] = frozenset()
    _exit: Callable[[], None] = field(default=lambda: None)

    def mark_threads(self) -> None:
        """The threads there now are the zygote's own: only a thread started later counts."""
        self.thread_ids_at_start = thread_ids()
        self.threads_at_start = len(self.thread_ids_at_start) or 1

    def hazard(self) -> str | None:
        now = thread_ids()
        threads = len(now) or 1
        if self.thread_ids_at_start:
            threads = self.threads_at_start + len(now - self.thread_ids_at_start)
        return fork_hazard(
            cuda_initialized=_cuda_initialized(),
            computed=self.computed,
            threads=threads,
            threads_at_start=self.threads_at_start,
            cuda_queried=self.cuda_queried,
        )

    def leave(self) -> None:
        """In a child: stop watching (its job computes)."""
        self._exit()


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def watch_torch() -> Watch:
    """Import torch and watch every torch function called from now on in this thread."""
    import torch
    from torch.overrides import TorchFunctionMode

    watch = Watch()

    class Computing(TorchFunctionMode):
        def __torch_function__(
            self,
            func: Any,
            types: Any,
            args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None,
        ) -> Any:
            threads = thread_ids() if watch.computed is None else frozenset()
            result = func(*args, **(kwargs or {}))
            tensors = [*args, *(kwargs or {}).values(), result]
            if (
                watch.computed is None
                and any(isinstance(t, torch.Tensor) for t in tensors)
                and not (
                    thread_ids() <= threads  # it started no thread (a BLAS pool would)
                    and torch_import_work(
                        _stack_files(),
                        str(Path(torch.__file__).parent),
                        max(t.numel() for t in tensors if isinstance(t, torch.Tensor)),
                    )
                )
            ):
                watch.computed = f"{_name(func)}{_caller(torch.__file__)}"
            return result

    mode = Computing()
    mode.__enter__()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    restore = _watch_cuda_queries(torch, watch)

    def leave() -> None:
        mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        restore()

    watch._exit = leave
    return watch


def _watch_cuda_queries(torch: Any, watch: Watch) -> Callable[[], None]:
    """Record in ``watch`` the first question for the CUDA devices: ``torch.cuda.is_available()``
    starts CUDA's driver (``cudaGetDeviceCount``: no child forked after it can use CUDA), and
    either it or ``device_count()`` answers for the zygote's devices, not a job's (a module's
    ``DEVICE = "cuda" if torch.cuda.is_available() else "cpu"``). Both are wrapped, calling
    through; the function returned puts the originals back (a child does, as it leaves)."""
    wrapped: list[tuple[Any, str, Any]] = []
    for owner, name in ((torch._C, "_cuda_getDeviceCount"), (torch.cuda, "device_count")):
        original = getattr(owner, name, None)
        if original is None:  # torch built without CUDA: nothing to ask
            continue

        def asking(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if watch.cuda_queried is None:
                watch.cuda_queried = f"is_available or device_count{_caller(torch.__file__)}"
            return _original(*args, **kwargs)

        setattr(owner, name, asking)
        wrapped.append((owner, name, original))

    def restore() -> None:
        for owner, name, original in wrapped:
            setattr(owner, name, original)

    return restore


def _name(func: Any) -> str:
    """``torch.ones``, ``Tensor.add``: a torch function as its user wrote it."""
    name = str(getattr(func, "__qualname__", None) or repr(func))
    for inner, outer in (("_VariableFunctionsClass.", "torch."), ("TensorBase.", "Tensor.")):
        if name.startswith(inner):
            return outer + name.removeprefix(inner)
    return name


# ATen's at::internal::GRAIN_SIZE: parallel_for runs a range smaller than this in the calling
# thread, so an operation on tensors of fewer elements enters no parallel region
GRAIN_SIZE = 32768


def torch_import_work(files: Sequence[str], torch_dir: str, elements: int) -> bool:
    """Whether a torch function called from these frames (their files, innermost first) on
    tensors of fewer than ``elements`` elements is torch's own module computing as it is
    imported: the innermost frame outside torch's own folder and this module is the import
    machinery's, and the tensors are too small for a parallel region. Some releases do this
    (2.6.0's ``torch._dynamo`` fills a table by applying operators to ``torch.ones(1)``). The
    watch excuses such a call only if it started no thread either. Any computation that code
    outside torch asked for (torchvision's or any other package's included), at import or later,
    counts. Pure."""
    if elements >= GRAIN_SIZE:
        return False
    for name in files:
        if _torch_or_here(name, torch_dir):
            continue
        return name.startswith("<frozen importlib")
    return False


def _torch_or_here(file: str, torch_dir: str) -> bool:
    """Whether a frame's file is torch's own (inside its folder: torchvision's beside it is not)
    or this module's."""
    return file.startswith(torch_dir.rstrip(os.sep) + os.sep) or file == __file__


def _stack_files() -> list[str]:
    """The files of the calling frames, innermost first."""
    files = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    return files


def _caller(torch_file: str) -> str:
    """`` at FILE:LINE`` of the innermost frame outside torch and this module: what made the
    zygote compute (a user's module, at import), or nothing where every frame is torch's."""
    torch_dir = str(Path(torch_file).parent)
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and _torch_or_here(frame.f_code.co_filename, torch_dir):
        frame = frame.f_back
    return "" if frame is None else f" at {frame.f_code.co_filename}:{frame.f_lineno}"


class UnsafeImport(Exception):
    """Importing a user's module in the zygote made forking unsafe (``hazard``). No import can
    be undone: the zygote must start afresh without it."""

    def __init__(self, module: str, hazard: str) -> None:
        super().__init__(f"importing {module} made forking unsafe: {hazard}")
        self.module = module
        self.hazard = hazard


def preload(
    *, torchvision: bool = True, distributed: bool = False, modules: Sequence[str] = ()
) -> Watch:
    """Everything a job imports that is slow to import, so that children start with it:
    torch, the worker, (``torchvision``: some job's model needs it) torchvision where
    installed, which imports torch._dynamo that every resnet job would pay again,
    (``distributed``) FSDP2 and torch.distributed.checkpoint, and last the user's model
    ``modules`` (``import_modules``). Imports only, watched from the first one on."""
    watch = watch_torch()
    import harness.worker.one_process

    if distributed:
        import torch._dynamo  # noqa: F401  (fully_shard imports it at its first call: slow)

        import harness.worker.distributed
        import harness.worker.distributed_recipes  # noqa: F401

    if torchvision:
        with contextlib.suppress(ImportError):
            import torchvision as _  # noqa: F401
    watch.mark_threads()
    import_modules(watch, modules)
    return watch


def import_modules(watch: Watch, modules: Sequence[str]) -> None:
    """Import each of a user's model modules as a child would (the same ``sys.path``: the
    current directory, then PYTHONPATH, as ``python -m`` sets it), each checked by the fork
    guard right after. One that raises is left to the children, which report what it raises;
    one after which forking would be unsafe raises :class:`UnsafeImport`."""
    for module in modules:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:  # the worker reports it, as the cell's error
            print(
                f"zygote: {module} raised {type(exc).__name__} at import ({exc}); each worker "
                "imports it",
                file=sys.stderr,
                flush=True,
            )
        hazard = watch.hazard()
        if hazard is not None:
            raise UnsafeImport(module, hazard)


def start_afresh(
    argv: Sequence[str],
    unsafe: UnsafeImport,
    answers: IO[bytes],
    *,
    cwd: str,
    environ: Mapping[str, str],
) -> NoReturn:
    """After :class:`UnsafeImport`: say so (stderr, the zygote's log; and a ``not_preloaded``
    answer, which the launcher shows the user once), then execute this zygote again, the same
    process and pipes, with the arguments ``argv`` less that module, in the directory and
    environment it started with (the module's import may have changed either). Its children
    import that module themselves, as spawned workers do."""
    print(f"zygote: {unsafe}; starting afresh without it", file=sys.stderr, flush=True)
    _answer(answers, {"event": "not_preloaded", "module": unsafe.module, "reason": unsafe.hazard})
    args = list(argv)
    at = next(i for i in range(len(args) - 1) if args[i : i + 2] == ["--import", unsafe.module])
    del args[at : at + 2]
    original = sys.orig_argv
    ours = len(original) >= len(argv) and original[len(original) - len(argv) :] == list(argv)
    prefix = (
        original[: len(original) - len(argv)] if ours else [sys.executable, "-m", "harness.worker"]
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(cwd)
    os.dup2(answers.fileno(), 1)  # the answers are stdout again, as the launcher started it
    os.execve(sys.executable, [*prefix, *args], dict(environ))


def run_worker(args: list[str]) -> int:
    """What a child runs: the same job as ``python -m harness.worker ARGS``."""
    from harness.worker.job import run_job

    return run_job(args)


def serve(
    requests: IO[bytes],
    answers: IO[bytes],
    *,
    run: Run = run_worker,
    load: Callable[[], Watch] = preload,
) -> int:
    """Serve requests until stdin closes and every child has ended. ``run`` and ``load`` are
    what a child runs and what the zygote imports first (replaced in the launcher's tests).
    Once it has refused to fork, every later request is answered ``failed`` with the reason,
    and the children it has are finished. Exit 0, or ``REFUSED_EXIT`` after a refusal."""
    watch = load()
    _answer(answers, {"event": "ready", "pid": os.getpid()})
    children: dict[int, int] = {}  # pid -> request id
    buffer = b""
    open_input = True
    refused: str | None = None
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
                        refused = _handle(line, refused, watch, children, requests, answers, run)
        else:
            select.select([], [], [], POLL_S)
        _reap(children, answers)
        if children and orchestrator_gone():  # killed: nobody will stop the children
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # each child leads its own session
            return REFUSED_EXIT
    return 0 if refused is None else REFUSED_EXIT


def _answer(answers: IO[bytes], message: Answer) -> None:
    answers.write(encode(message))
    answers.flush()


def _handle(
    line: bytes,
    refused: str | None,
    watch: Watch,
    children: dict[int, int],
    requests: IO[bytes],
    answers: IO[bytes],
    run: Run,
) -> str | None:
    """Start the request's child; or say why the zygote stops forking. Returns the reason it
    refuses to fork, once it does."""
    try:
        request = parse_request(line)
    except ProtocolError as exc:
        return refused or _refuse(answers, str(exc), None)
    if refused is not None:
        _answer(answers, {"event": "failed", "id": request["id"], "error": refused})
        return refused
    hazard = watch.hazard()
    if hazard is not None:
        return _refuse(answers, hazard, request["id"])
    _start(request, watch, children, requests, answers, run)
    return None


def _refuse(answers: IO[bytes], reason: str, job_id: int | None) -> str:
    """Say (on stderr, the zygote's log, and as the last answers) that it stops forking, and
    why; ``stopping`` first, so the orchestrator knows before the request's ``failed``."""
    print(f"zygote: refusing to fork: {reason}", file=sys.stderr, flush=True)
    _answer(answers, {"event": "stopping", "reason": reason})
    if job_id is not None:
        _answer(answers, {"event": "failed", "id": job_id, "error": reason})
    return reason


def _start(
    request: StartRequest,
    watch: Watch,
    children: dict[int, int],
    requests: IO[bytes],
    answers: IO[bytes],
    run: Run,
) -> None:
    job_id = request["id"]
    if os.environ.get(faults.VARIABLE):  # the harness's own tests: a zygote that fails
        fault = faults.zygote_fault(request["args"])
        if fault == "zygote_dies":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "zygote_garbage":
            answers.write(b"\x00 this is not a message\n")
            answers.flush()
    try:
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        _answer(answers, {"event": "failed", "id": job_id, "error": f"cannot open its log: {exc}"})
        return
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(log_fd)
        _answer(answers, {"event": "failed", "id": job_id, "error": f"fork failed: {exc}"})
        return
    if pid == 0:  # the child: never returns
        _child(request, watch, log_fd, requests, answers, run)
    os.close(log_fd)
    children[pid] = job_id
    _answer(answers, {"event": "started", "id": job_id, "pid": pid})


def _child(
    request: StartRequest,
    watch: Watch,
    log_fd: int,
    requests: IO[bytes],
    answers: IO[bytes],
    run: Run,
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
        watch.leave()
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
            returncode = os.waitstatus_to_exitcode(status)
            _answer(answers, {"event": "ended", "id": job_id, "returncode": returncode})
