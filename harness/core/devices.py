"""Devices as data: where a saver puts its model, the map_location policies, and where
``torch.load`` restores a storage (the rules of ``torch/serialization.py``).

Pure: the oracle and the matrix use it without torch. A device is a string, ``"cpu"`` or the
logical ``"cuda:K"`` of the process's own visibility (``cuda:0`` is the first GPU listed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.core.errors import ConfigError
from harness.core.outcomes import ErrorClass

DEFAULT_DEVICE = "default"  # logical cuda:0 where the process sees a GPU, else cpu

# map_location policies: name -> what the worker passes to torch.load
# (see harness.worker.one_process_recipes)
MAP_LOCATIONS: dict[str, str] = {
    "none": "no map_location: storages return to the device they were saved on",
    "cpu": "map_location='cpu'",
    "cuda0": "map_location='cuda:0'",
    "device_cuda0": "map_location=torch.device('cuda:0')",
    "remap_saved_to_cpu": "map_location={saved_tag: 'cpu'} with the exact saved tag",
    "remap_cuda0_to_cpu": "map_location={'cuda:0': 'cpu'}, which matches only a cuda:0 tag",
    "remap_saved_to_cuda0": "map_location={saved_tag: 'cuda:0'} with the exact saved tag",
    "callable_identity": "map_location=lambda storage, loc: storage (keeps the CPU copy)",
}

_CUDA = re.compile(r"cuda:(\d+)")


def cuda_index(device: str) -> int | None:
    match = _CUDA.fullmatch(device)
    return int(match.group(1)) if match else None


def check_device(value: str, where: str) -> str:
    if value in ("cpu", DEFAULT_DEVICE) or cuda_index(value) is not None:
        return value
    raise ConfigError(f"{where}: unknown device {value!r}; expected 'default', 'cpu' or 'cuda:K'")


def check_map_location(value: str, where: str) -> str:
    if value in MAP_LOCATIONS:
        return value
    known = ", ".join(MAP_LOCATIONS)
    raise ConfigError(f"{where}: unknown map_location {value!r}; expected one of {known}")


def resolve_device(device: str, visible: int) -> str:
    """``default`` -> ``cuda:0`` when the process sees a GPU, else ``cpu``."""
    if device == DEFAULT_DEVICE:
        return "cuda:0" if visible else "cpu"
    return device


def distributed_backend(visible: int) -> str:
    """The process group of a distributed job: NCCL where its ranks see GPUs (one each), gloo on
    the CPU."""
    return "nccl" if visible else "gloo"


def rank_device(local_rank: int, visible: int) -> str:
    """A rank's device: its own GPU of the job's subset (logical ``cuda:LOCAL_RANK``), or the CPU
    where the job sees none."""
    if not visible:
        return "cpu"
    if not 0 <= local_rank < visible:
        raise ValueError(
            f"local rank {local_rank} has no GPU of its own: the job sees {visible}; a distributed "
            "job runs one rank per GPU of its subset"
        )
    return f"cuda:{local_rank}"


def restore_target(saved_tag: str, map_location: str) -> str:
    """Where ``torch.load`` puts a storage tagged ``saved_tag`` under a map_location policy."""
    if map_location == "none":
        return saved_tag
    if map_location in ("cpu", "callable_identity"):
        return "cpu"
    if map_location in ("cuda0", "device_cuda0"):
        return "cuda:0"
    if map_location == "remap_saved_to_cpu":
        return "cpu"
    if map_location == "remap_saved_to_cuda0":
        return "cuda:0"
    if map_location == "remap_cuda0_to_cpu":
        return "cpu" if saved_tag == "cuda:0" else saved_tag
    raise ValueError(f"unknown map_location {map_location!r}")


def restore_error(target: str, visible: int) -> tuple[ErrorClass | None, str]:
    """PyTorch's check before a storage is moved to ``target`` in a process seeing ``visible``
    GPUs: CUDA must be available, and the index must exist."""
    index = cuda_index(target)
    if index is None:
        return None, f"restored to {target}"
    if visible == 0:
        return ErrorClass.CUDA_UNAVAILABLE, f"a storage goes to {target} and no GPU is visible"
    if index >= visible:
        return (
            ErrorClass.DEVICE_INDEX_OUT_OF_RANGE,
            f"a storage goes to {target} and the loader sees {visible} GPU(s)",
        )
    return None, f"restored to {target}"


@dataclass(frozen=True)
class DeviceMap:
    """GPU index -> the UUID a worker is given for it (from the inventory). Workers get UUIDs in
    CUDA_VISIBLE_DEVICES where known, so CUDA's own device ordering cannot remap them."""

    uuids: Mapping[int, str] = field(default_factory=dict)

    def env_value(self, visibility: tuple[int, ...]) -> str:
        return ",".join(self.uuids.get(index, str(index)) for index in visibility)

    def expected_uuids(self, visibility: tuple[int, ...]) -> tuple[str, ...] | None:
        """The UUIDs the worker's logical devices must report, in order (None: unknown)."""
        if not all(index in self.uuids for index in visibility):
            return None
        return tuple(normalise_uuid(self.uuids[index]) for index in visibility)


def normalise_uuid(uuid: str) -> str:
    """``GPU-1a2b...``/``MIG-...`` (nvidia-smi, NVML) and ``1a2b...`` (torch) compare equal."""
    return uuid.removeprefix("GPU-").removeprefix("MIG-").lower()
