"""The isolation probe: what this worker process actually sees."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

import torch


def isolation_probe() -> dict[str, Any]:
    count = torch.cuda.device_count()
    return {
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_count": count,
        "uuids": [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)],
    }


def environment() -> dict[str, Any]:
    """The torch side of the run's environment, read in a worker (the orchestrator never imports
    torch)."""
    try:
        vision: str | None = metadata.version("torchvision")  # no import: it costs ~1.7 s
    except metadata.PackageNotFoundError:
        vision = None
    return {
        "torch": torch.__version__,
        "torchvision": vision,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count(),
    }
