"""The zygote's fork guard: the pure rule, and the watch on real torch calls."""

from __future__ import annotations

import threading

import pytest

from harness.worker.zygote import fork_hazard, thread_count, watch_torch

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
    watch.threads_at_start = thread_count()
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
