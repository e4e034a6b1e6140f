"""The zygote's fork guard: the pure rule, the watch on real torch calls, and a user's module
imported under it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.worker.entry import ZygoteOptions, zygote_options
from harness.worker.fork_server import (
    GRAIN_SIZE,
    UnsafeImport,
    Watch,
    fork_hazard,
    import_modules,
    thread_ids,
    torch_import_work,
    watch_torch,
)

CLEAN = {"cuda_initialized": False, "computed": None, "threads": 1, "threads_at_start": 1}


def test_a_clean_zygote_may_fork() -> None:
    assert fork_hazard(**CLEAN) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"cuda_initialized": True}, "CUDA was initialised in the zygote"),
        ({"computed": "Tensor.add"}, "ran a tensor computation (Tensor.add)"),
        ({"threads": 2}, "has 2 threads, 1 after its imports"),
    ],
)
def test_each_hazard_is_named(change: dict[str, object], named: str) -> None:
    reason = fork_hazard(**{**CLEAN, **change})  # type: ignore[arg-type]
    assert reason is not None
    assert named in reason


def test_the_watch_sees_a_computation_and_not_an_import() -> None:
    watch = watch_torch()
    try:
        import torch.nn.functional

        torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        assert watch.computed is None
        torch.ones(2).add(1)
        assert watch.computed is not None
        assert "ones" in watch.computed
    finally:
        watch.leave()


def test_a_started_thread_is_a_hazard() -> None:
    watch = watch_torch()
    watch.leave()
    watch.mark_threads()
    assert watch.hazard() is None
    stop = threading.Event()
    extra = threading.Thread(target=stop.wait)
    extra.start()
    try:
        reason = watch.hazard()
        assert reason is not None
        assert "threads" in reason
    finally:
        stop.set()
        extra.join()


def _gone(native_id: int | None, within: float = 10.0) -> bool:
    """Whether the thread has left /proc/self/task: join() returns once Python is done with a
    thread, a moment before the kernel removes it, so a test that needs it gone waits for that."""
    deadline = time.monotonic() + within
    while native_id in thread_ids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_started_thread_counts_even_where_another_ended() -> None:
    # counting alone would miss it: one thread more, one fewer
    end_passing, end_started = threading.Event(), threading.Event()
    passing = threading.Thread(target=end_passing.wait)
    passing.start()
    watch = watch_torch()
    watch.leave()
    watch.mark_threads()
    started = threading.Thread(target=end_started.wait)
    try:
        started.start()
        passing_id = passing.native_id
        end_passing.set()
        passing.join()
        assert _gone(passing_id)
        assert started.native_id in thread_ids()
        reason = watch.hazard()
        assert reason is not None
        assert "threads" in reason
    finally:
        end_passing.set()
        end_started.set()
        started.join()


def test_the_zygote_options_name_the_modules_to_import() -> None:
    options = zygote_options(["--zygote", "--import", "a", "--no-torchvision", "--import", "b.c"])
    assert options == ZygoteOptions(torchvision=False, distributed=False, modules=("a", "b.c"))
    assert zygote_options(["--zygote"]) == ZygoteOptions()
    for bad in (["--zygote", "--import"], ["--zygote", "--import", "--distributed"], ["x.json"]):
        assert zygote_options(bad) is None


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for modules written by the test; they are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("zygote_user_"):
            del sys.modules[name]


def watched() -> Watch:
    watch = watch_torch()
    watch.mark_threads()
    return watch


def test_a_users_module_is_imported_under_the_watch(
    user_modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (user_modules / "zygote_user_plain.py").write_text("import torch\nfrom torch import nn\n")
    (user_modules / "zygote_user_broken.py").write_text("raise RuntimeError('its own bug')\n")
    watch = watched()
    try:
        import_modules(watch, ["zygote_user_plain", "zygote_user_broken"])
    finally:
        watch.leave()
    assert "zygote_user_plain" in sys.modules
    # one that raises is left to the workers, which report what it raises
    assert "zygote_user_broken" not in sys.modules
    assert (
        "zygote_user_broken raised RuntimeError at import (its own bug)" in capsys.readouterr().err
    )


def test_a_module_that_computes_at_import_is_unsafe_naming_what_and_where(
    user_modules: Path,
) -> None:
    (user_modules / "zygote_user_computes.py").write_text("import torch\n\nX = torch.ones(2) * 3\n")
    watch = watched()
    try:
        with pytest.raises(UnsafeImport) as caught:
            import_modules(watch, ["zygote_user_computes"])
    finally:
        watch.leave()
    assert caught.value.module == "zygote_user_computes"
    where = user_modules / "zygote_user_computes.py"
    assert f"ran a tensor computation (torch.ones at {where}:3)" in caught.value.hazard


def test_a_module_that_starts_a_thread_at_import_is_unsafe(user_modules: Path) -> None:
    code = (
        "import threading\n\nSTOP = threading.Event()\nthreading.Thread(target=STOP.wait).start()\n"
    )
    (user_modules / "zygote_user_thread.py").write_text(code)
    watch = watched()
    try:
        with pytest.raises(
            UnsafeImport, match="zygote_user_thread made forking unsafe: the zygote"
        ):
            import_modules(watch, ["zygote_user_thread"])
    finally:
        watch.leave()
        sys.modules["zygote_user_thread"].STOP.set()


def test_a_module_that_asks_for_the_cuda_devices_at_import_is_unsafe(user_modules: Path) -> None:
    """``DEVICE = "cuda" if torch.cuda.is_available() else "cpu"``: the zygote's answer is not a
    job's, and is_available() starts CUDA's driver. (device_count() here: on a GPU machine it
    reads NVML and leaves this test process able to fork.)"""
    import torch

    code = "import torch\nN = torch.cuda.device_count()\n"
    (user_modules / "zygote_user_cuda.py").write_text(code)
    originals = (torch.cuda.device_count, torch._C._cuda_getDeviceCount)
    watch = watched()
    try:
        with pytest.raises(UnsafeImport) as caught:
            import_modules(watch, ["zygote_user_cuda"])
    finally:
        watch.leave()
    where = user_modules / "zygote_user_cuda.py"
    assert f"asked torch for the CUDA devices (is_available or device_count at {where}:2)" in (
        caught.value.hazard
    )
    assert (torch.cuda.device_count, torch._C._cuda_getDeviceCount) == originals  # put back


# The stack of torch 2.6.0's torch.ones(1) in torch._dynamo as the zygote's imports ran it
# (recorded; innermost first, this module's handler left out, site-packages shortened).
TORCH = "/venv/lib/python3.11/site-packages/torch"
DYNAMO_AT_IMPORT = [
    f"{TORCH}/_dynamo/variables/torch_function.py",
    f"{TORCH}/_dynamo/variables/torch_function.py",
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    "<frozen importlib._bootstrap>",
    f"{TORCH}/_dynamo/codegen.py",
    "<frozen importlib._bootstrap>",
    f"{TORCH}/distributed/fsdp/__init__.py",
    "<frozen importlib._bootstrap>",
    "/work/harness/worker/one_process.py",
    "/work/harness/worker/fork_server.py",
]


def test_torch_computing_small_tensors_as_it_is_imported_is_not_a_hazard() -> None:
    assert torch_import_work(DYNAMO_AT_IMPORT, TORCH, elements=1)


@pytest.mark.parametrize(
    ("files", "elements"),
    [
        # a tensor large enough for a parallel region, even in torch's own import
        (DYNAMO_AT_IMPORT, GRAIN_SIZE),
        # a user's module building a model at import: torch.nn's init called from its body
        (
            [
                f"{TORCH}/nn/init.py",
                f"{TORCH}/nn/modules/linear.py",
                "/u/model.py",
                *DYNAMO_AT_IMPORT[2:],
            ],
            1,
        ),
        # the harness or a user computing directly, after the imports
        (["/work/harness/worker/job.py"], 1),
        # another package beside torch, whose folder's name starts like torch's, at its import
        ([f"{TORCH}vision/models/resnet.py", *DYNAMO_AT_IMPORT[2:]], 1),
        # nothing outside torch at all: not an import
        ([f"{TORCH}/_dynamo/variables/torch_function.py"], 1),
    ],
)
def test_any_other_computation_counts(files: list[str], elements: int) -> None:
    assert not torch_import_work(files, TORCH, elements=elements)
