"""The isolation probe: what this worker process actually sees."""

from __future__ import annotations

import os
import traceback
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
        vision: str | None = metadata.version("torchvision")  # no import, slow: docs/performance.md
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
    the error that building it raised: what the run learns before any cell runs. A model that
    gives an example input is run once, as every cell will run it (a training step, then an
    eval-mode forward), so one that cannot run stops the run here, with its traceback, instead
    of failing every cell. A zoo model whose package is missing keeps its declared traits (its
    cells are skipped, with the reason)."""
    from harness.core.jobspec import TRAIN_STEPS
    from harness.core.zoo import ModelError, ModelTraits, key_traits, model_spec
    from harness.worker.fingerprint import fingerprint, output_digest
    from harness.worker.models import build, has_example_input, perturb, train

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
        integers = any(not (t.is_floating_point() or t.is_complex()) for t in tensors)
        given = has_example_input(name)
        built = fingerprint(model)
        other = fingerprint(build(name, seed=1))
        stochastic = False
        if given:
            stochastic = draws_random_numbers(model, name)
            train(model, name, steps=TRAIN_STEPS)  # the saver's training
        else:
            perturb(model)  # what the saver will do instead of training
        after = fingerprint(model)
        constants = sorted(
            entry
            for entry, record in built.items()
            if record["digest"] == other.get(entry, {}).get("digest") == after[entry]["digest"]
        )
        if given:
            output_digest(model, name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's module may sys.exit() at import (argparse)
        missing = missing_package(exc, name)
        if missing is not None:
            reason = (
                f"{name} needs {missing}, which the workers' interpreter lacks (pip install "
                f"{missing} beside torch, or leave the model out)"
            )
            absent = ModelTraits(
                top_level_module_attr=False, nested_module_dot=False, unavailable=reason
            )
            return {"traits": absent.to_json(), "tensors": None}
        what = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
        if not what.startswith(f"model {name}"):
            what = f"model {name}: {what}"
        return {"error": what + model_traceback(exc)}
    traits = ModelTraits(
        top_level_module_attr=top_level,
        nested_module_dot=nested,
        example_input=given,
        tied=tied,
        parametrized=parametrized,
        integer_tensors=integers,
        stochastic=stochastic,
        constants=tuple(constants),
    )
    return {"traits": traits.to_json(), "tensors": len(keys)}


def model_traceback(exc: BaseException) -> str:
    """Where the user's code failed: the frames of the exception (of its cause, where the harness
    wrapped it), for the message that stops the run. Not headed "Traceback": the harness's own
    bugs print that, and this is not one. Empty for an error the harness raised itself."""
    from harness.core.zoo import ModelError

    failure = exc.__cause__ if exc.__cause__ is not None else exc
    if failure.__traceback__ is None or (failure is exc and isinstance(exc, ModelError)):
        return ""
    frames = "".join(traceback.format_tb(failure.__traceback__)).rstrip()
    return f"\nthe model's traceback (most recent call last):\n{frames}"


def missing_package(exc: BaseException, name: str) -> str | None:
    """The package a user's model needs and the interpreter lacks: a ModuleNotFoundError (or
    one that caused ``exc``) for a module outside the user's own package. None for anything
    else, the user's own module not found included (that is a mistake in the model's name)."""
    own = name.partition(":")[0].split(".")[0]
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            top = seen.name.split(".")[0]
            return None if top == own else top
        seen = seen.__cause__
    return None


def draws_random_numbers(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's training forward and backward draw from torch's random-number
    generators (dropout does): the default generator's state, and each visible GPU's, before and
    after one training step on the example input. The run's generators are left as they were."""
    from harness.worker.models import backward, example_input, model_device, on_device

    device = model_device(model)
    gpus = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        before = rng_states(gpus)
        model.train()
        backward(model, on_device(example_input(name), device), name)
        drew = not all(
            torch.equal(old, new) for old, new in zip(before, rng_states(gpus), strict=True)
        )
    model.zero_grad(set_to_none=True)
    model.eval()
    return drew


def rng_states(gpus: list[int]) -> list[torch.Tensor]:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(gpu) for gpu in gpus)]


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True
