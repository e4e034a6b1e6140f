"""torch.load's restore rules as a table: saved tag x map_location x GPUs visible to the loader."""

from __future__ import annotations

import pytest

from harness.core.devices import (
    MAP_LOCATIONS,
    check_device,
    check_map_location,
    distributed_backend,
    rank_device,
    resolve_device,
    restore_error,
    restore_target,
)
from harness.core.outcomes import ErrorClass

UNAVAILABLE, RANGE = ErrorClass.CUDA_UNAVAILABLE, ErrorClass.DEVICE_INDEX_OUT_OF_RANGE

TABLE = [
    # saved tag, map_location, GPUs the loader sees, target, error
    ("cpu", "none", 0, "cpu", None),
    ("cuda:0", "none", 0, "cuda:0", UNAVAILABLE),
    ("cuda:0", "none", 1, "cuda:0", None),
    ("cuda:1", "none", 1, "cuda:1", RANGE),
    ("cuda:1", "none", 2, "cuda:1", None),
    ("cuda:1", "cpu", 0, "cpu", None),
    ("cpu", "cuda0", 0, "cuda:0", UNAVAILABLE),
    ("cuda:1", "cuda0", 1, "cuda:0", None),
    ("cuda:1", "device_cuda0", 1, "cuda:0", None),
    ("cuda:1", "remap_saved_to_cpu", 0, "cpu", None),
    ("cuda:1", "remap_cuda0_to_cpu", 0, "cuda:1", UNAVAILABLE),  # the dict matches only cuda:0
    ("cuda:1", "remap_cuda0_to_cpu", 1, "cuda:1", RANGE),
    ("cuda:0", "remap_cuda0_to_cpu", 0, "cpu", None),
    ("cuda:1", "remap_saved_to_cuda0", 1, "cuda:0", None),
    ("cuda:1", "remap_saved_to_cuda0", 0, "cuda:0", UNAVAILABLE),
    ("cuda:1", "callable_identity", 0, "cpu", None),
]


@pytest.mark.parametrize(("tag", "mapping", "visible", "target", "error"), TABLE)
def test_restore_table(
    tag: str, mapping: str, visible: int, target: str, error: ErrorClass | None
) -> None:
    assert restore_target(tag, mapping) == target
    assert restore_error(target, visible)[0] is error


def test_table_covers_every_map_location() -> None:
    assert {row[1] for row in TABLE} == set(MAP_LOCATIONS)


def test_default_device_and_validation() -> None:
    assert resolve_device("default", 0) == "cpu"
    assert resolve_device("default", 2) == "cuda:0"
    assert resolve_device("cuda:1", 0) == "cuda:1"
    assert check_device("cuda:3", "w") == "cuda:3"
    with pytest.raises(ValueError, match=r"s\.toml: unknown device 'gpu1'"):
        check_device("gpu1", "s.toml")
    with pytest.raises(ValueError, match=r"unknown map_location 'lambda'"):
        check_map_location("lambda", "s.toml")


@pytest.mark.parametrize(
    ("local_rank", "visible", "backend", "device"),
    [
        (0, 0, "gloo", "cpu"),
        (3, 0, "gloo", "cpu"),
        (0, 1, "nccl", "cuda:0"),
        (1, 2, "nccl", "cuda:1"),
    ],
)
def test_a_rank_uses_its_own_gpu_with_nccl_or_the_cpu_with_gloo(
    local_rank: int, visible: int, backend: str, device: str
) -> None:
    assert distributed_backend(visible) == backend
    assert rank_device(local_rank, visible) == device


def test_a_rank_without_a_gpu_of_its_own_is_refused() -> None:
    with pytest.raises(ValueError, match="local rank 2 has no GPU of its own: the job sees 2"):
        rank_device(2, 2)
