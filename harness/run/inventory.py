"""What the machine has: GPUs, driver and CUDA versions, read without initialising CUDA.

Why never CUDA here: CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when a process first initialises
it, so a process that touched CUDA cannot change its own device visibility; and a child forked
from such a process cannot use CUDA at all. The orchestrator therefore reads the inventory from
NVML (``nvidia-ml-py``, which talks to the driver, not the CUDA runtime) or from ``nvidia-smi`` in
a subprocess, and leaves every CUDA call to the worker processes it starts.

Parsing is pure (``parse_*``) and tested on recorded outputs; ``read_inventory`` does the I/O.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.errors import UserError

QUERY_FIELDS = "index,uuid,name,memory.total,mig.mode.current,driver_version"
NVIDIA_SMI_QUERY = ["--query-gpu=" + QUERY_FIELDS, "--format=csv,noheader,nounits"]


class InventoryError(UserError):
    """The inventory's input cannot be understood; the message names it and the fix."""


@dataclass(frozen=True, kw_only=True)
class Gpu:
    index: int  # nvidia-smi's index (PCI bus order)
    uuid: str  # GPU-... ; the value workers get in CUDA_VISIBLE_DEVICES
    name: str
    memory_mib: int | None
    mig_enabled: bool = False
    mig_uuids: tuple[str, ...] = ()  # MIG-... instances, when MIG mode is on

    @property
    def device_uuid(self) -> str:
        """What a worker is given: the GPU, or its first MIG instance (CUDA enumerates at most
        one MIG instance per process)."""
        return self.mig_uuids[0] if self.mig_enabled and self.mig_uuids else self.uuid

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_mib": self.memory_mib,
            "mig_enabled": self.mig_enabled,
            "mig_uuids": list(self.mig_uuids),
        }


@dataclass(frozen=True, kw_only=True)
class Inventory:
    gpus: tuple[Gpu, ...]  # the GPUs this run may use, in the order it was given them
    driver_version: str | None = None
    cuda_version: str | None = None
    source: str = "none"  # nvml | nvidia-smi | none | simulated
    outer_visible: str | None = None  # CUDA_VISIBLE_DEVICES as the harness found it
    notes: tuple[str, ...] = ()
    simulated: bool = False

    @property
    def uuids(self) -> dict[int, str]:
        return {gpu.index: gpu.device_uuid for gpu in self.gpus}

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(gpu.index for gpu in self.gpus)

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [gpu.to_json() for gpu in self.gpus] or "none",
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "source": self.source,
            "outer_cuda_visible_devices": self.outer_visible,
            "simulated": self.simulated,
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        lines = []
        if self.simulated:
            lines.append("SIMULATED inventory: not GPU evidence")
        if not self.gpus:
            lines.append("no GPU: CPU fallback")
        for gpu in self.gpus:
            memory = "?" if gpu.memory_mib is None else f"{gpu.memory_mib} MiB"
            mig = f", MIG on ({len(gpu.mig_uuids)} instances)" if gpu.mig_enabled else ""
            lines.append(f"GPU {gpu.index}: {gpu.name}, {memory}, {gpu.uuid}{mig}")
        lines.append(
            f"driver {self.driver_version or '-'}, CUDA (driver) {self.cuda_version or '-'}"
        )
        lines.append(f"source: {self.source}")
        if self.outer_visible is not None:
            lines.append(f"outer CUDA_VISIBLE_DEVICES={self.outer_visible!r}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def parse_query_csv(text: str, where: str = "nvidia-smi --query-gpu") -> list[Gpu]:
    gpus = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 6:
            raise InventoryError(
                f"{where} line {number}: expected 6 fields ({QUERY_FIELDS}), got {len(cells)}: "
                f"{line!r}"
            )
        index, uuid, name, memory, mig, _driver = cells
        if not index.isdigit() or not uuid.startswith("GPU-"):
            raise InventoryError(f"{where} line {number}: bad index or UUID in {line!r}")
        gpus.append(
            Gpu(
                index=int(index),
                uuid=uuid,
                name=name,
                memory_mib=int(memory) if memory.isdigit() else None,
                mig_enabled=mig == "Enabled",
            )
        )
    return gpus


def driver_from_query_csv(text: str) -> str | None:
    for line in text.splitlines():
        if line.strip():
            return line.rsplit(",", 1)[-1].strip()
    return None


_LIST_GPU = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[0-9a-fA-F-]+)\)")
_LIST_MIG = re.compile(r"^\s+MIG .*Device\s+(\d+): \(UUID: (MIG-[0-9a-fA-F-]+)\)")


def parse_mig_instances(text: str) -> dict[int, tuple[str, ...]]:
    """``nvidia-smi -L``: the MIG instance UUIDs under each GPU index."""
    instances: dict[int, list[str]] = {}
    current: int | None = None
    for line in text.splitlines():
        if match := _LIST_GPU.match(line):
            current = int(match.group(1))
        elif (match := _LIST_MIG.match(line)) and current is not None:
            instances.setdefault(current, []).append(match.group(2))
    return {index: tuple(uuids) for index, uuids in instances.items()}


def parse_cuda_version(text: str) -> str | None:
    match = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    return match.group(1) if match else None


def with_mig(gpus: Sequence[Gpu], instances: Mapping[int, tuple[str, ...]]) -> list[Gpu]:
    return [replace(gpu, mig_uuids=instances.get(gpu.index, ())) for gpu in gpus]


def apply_outer_visibility(gpus: Sequence[Gpu], outer: str | None) -> list[Gpu]:
    """The GPUs an outer ``CUDA_VISIBLE_DEVICES`` (set by a CI runner) gives this harness, in its
    order. Entries are indices, ``GPU-``/``MIG-`` UUIDs or unique UUID prefixes, as CUDA reads
    them. ``None`` (unset) gives all; ``""`` or ``-1`` gives none."""
    if outer is None:
        return list(gpus)
    entries = [entry.strip() for entry in outer.split(",") if entry.strip()]
    if not entries or entries[0] == "-1":
        return []
    chosen: list[Gpu] = []
    for entry in entries:
        if entry.isdigit():
            found = [gpu for gpu in gpus if gpu.index == int(entry)]
        else:
            found = [
                gpu
                for gpu in gpus
                if gpu.uuid.startswith(entry) or any(m.startswith(entry) for m in gpu.mig_uuids)
            ]
        if len(found) != 1:
            what = "matches no GPU" if not found else "matches several GPUs"
            known = ", ".join(f"{gpu.index}={gpu.uuid}" for gpu in gpus) or "none"
            raise InventoryError(
                f"CUDA_VISIBLE_DEVICES={outer!r}: entry {entry!r} {what} (GPUs: {known}); "
                "fix the runner's CUDA_VISIBLE_DEVICES or unset it"
            )
        gpu = found[0]
        if entry.startswith("MIG-"):
            uuid = next(m for m in gpu.mig_uuids if m.startswith(entry))
            gpu = replace(gpu, mig_uuids=(uuid,))
        if gpu in chosen:
            raise InventoryError(f"CUDA_VISIBLE_DEVICES={outer!r}: GPU {gpu.index} listed twice")
        chosen.append(gpu)
    return chosen


def from_nvidia_smi(
    query_csv: str, list_text: str, header_text: str, outer: str | None
) -> Inventory:
    """The inventory from the three recorded ``nvidia-smi`` outputs and the outer visibility."""
    gpus = with_mig(parse_query_csv(query_csv), parse_mig_instances(list_text))
    notes = []
    if any(gpu.mig_enabled for gpu in gpus):
        notes.append("MIG: a MIG-enabled GPU is used through its first instance, one per process")
    return Inventory(
        gpus=tuple(apply_outer_visibility(gpus, outer)),
        driver_version=driver_from_query_csv(query_csv),
        cuda_version=parse_cuda_version(header_text),
        source="nvidia-smi",
        outer_visible=outer,
        notes=tuple(notes),
    )


def simulated(count: int) -> Inventory:
    """A fake inventory for planning and listing; never GPU evidence."""
    if count < 0:
        raise InventoryError(f"--simulate-gpus {count}: must be 0 or more")
    gpus = tuple(
        Gpu(
            index=i, uuid=f"GPU-00000000-0000-0000-0000-{i:012d}", name="simulated", memory_mib=None
        )
        for i in range(count)
    )
    return Inventory(gpus=gpus, source="simulated", simulated=True)


@dataclass
class Runner:
    """Runs a command for the inventory readers; replaced by a fake in tests."""

    timeout_s: float = 20.0
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=self.timeout_s, check=False
        )


def read_nvml(outer: str | None) -> Inventory | None:
    """NVML through nvidia-ml-py, when installed and a driver answers; None otherwise."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                mig_on = pynvml.nvmlDeviceGetMigMode(handle)[0] == 1
            except pynvml.NVMLError:
                mig_on = False
            migs: list[str] = []
            if mig_on:
                for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                    try:
                        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                    except pynvml.NVMLError:
                        continue
                    migs.append(str(pynvml.nvmlDeviceGetUUID(mig)))
            gpus.append(
                Gpu(
                    index=index,
                    uuid=str(pynvml.nvmlDeviceGetUUID(handle)),
                    name=str(pynvml.nvmlDeviceGetName(handle)),
                    memory_mib=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // (1 << 20),
                    mig_enabled=mig_on,
                    mig_uuids=tuple(migs),
                )
            )
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        return Inventory(
            gpus=tuple(apply_outer_visibility(gpus, outer)),
            driver_version=str(pynvml.nvmlSystemGetDriverVersion()),
            cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}",
            source="nvml",
            outer_visible=outer,
        )
    finally:
        pynvml.nvmlShutdown()


def read_nvidia_smi(outer: str | None, run: Runner | None = None) -> Inventory:
    run = run or Runner()
    if shutil.which("nvidia-smi") is None:
        return Inventory(
            gpus=(),
            source="none",
            outer_visible=outer,
            notes=("nvidia-smi not found and NVML not available",),
        )
    query = run(["nvidia-smi", *NVIDIA_SMI_QUERY])
    if query.returncode != 0:
        said = (query.stderr or query.stdout).strip()
        return Inventory(
            gpus=(),
            source="nvidia-smi",
            outer_visible=outer,
            notes=(f"nvidia-smi exited {query.returncode}: {said}",),
        )
    listing = run(["nvidia-smi", "-L"])
    header = run(["nvidia-smi"])
    return from_nvidia_smi(query.stdout, listing.stdout, header.stdout, outer)


def read_inventory(environ: Mapping[str, str]) -> Inventory:
    """NVML first, then nvidia-smi; neither: no GPU (CPU fallback)."""
    outer = environ.get("CUDA_VISIBLE_DEVICES")
    return read_nvml(outer) or read_nvidia_smi(outer)
