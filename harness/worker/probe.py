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


def measure_model(name: str) -> dict[str, Any]:
    """A model's traits for the oracle, measured from its real state_dict (the saver's seed), or
    the error that building it raised: what the run learns before any cell runs. A zoo model
    whose package is missing keeps its declared traits (its cells are skipped, with the reason)."""
    from harness.worker.models import build, example_input, has_example_input, perturb
    from harness.zoo import ModelError, ModelTraits, key_traits, model_spec

    spec = model_spec(name, "the run's models")
    if spec.needs_torchvision and spec.declared is not None and not _installed("torchvision"):
        return {"traits": spec.declared.to_json(), "tensors": None, "declared": True}
    try:
        model = build(name, seed=0)
        tensors = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor)]
        keys = list(model.state_dict())
        top_level, nested = key_traits(keys)
        storages = {t.untyped_storage().data_ptr() for t in tensors if t.numel()}
        tied = len(storages) < sum(1 for t in tensors if t.numel())
        parametrized = any(".parametrizations." in f".{key}" for key in keys)
        given = has_example_input(name)
        if given:
            example_input(name)  # it must produce a tensor
        else:
            perturb(build(name, seed=0))  # what the saver will do instead of training
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's module may sys.exit() at import (argparse)
        if isinstance(exc, ModelError):
            return {"error": str(exc)}
        return {"error": f"model {name}: {type(exc).__name__}: {exc}"}
    traits = ModelTraits(
        top_level_module_attr=top_level,
        nested_module_dot=nested,
        example_input=given,
        tied=tied,
        parametrized=parametrized,
    )
    return {"traits": traits.to_json(), "tensors": len(keys)}


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True
