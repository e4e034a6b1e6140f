"""Training-state checkpoints: optimizers, schedulers, RNG states, and resuming from them.

The saver trains ``RESUME_AT`` steps, saves the whole training state, trains ``RESUME_MORE``
more and records the result; a correct resume in another process, under another layout, must
reach that result bitwise. The data order comes from a ``torch.Generator`` whose state is part of
the checkpoint, as is the global torch RNG state.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from harness.core.classify import OptimizerStateDeviceError
from harness.core.jobspec import RESUME_AT, RESUME_MORE
from harness.worker.models import (
    backward,
    example_input,
    model_device,
    noised,
    on_device,
    unwrap,
)

TOTAL_STEPS = RESUME_AT + RESUME_MORE
DATA_SEED = 99
ARGS = {"steps": TOTAL_STEPS, "data_seed": DATA_SEED}

Regime = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def make_regime(name: str, model: nn.Module) -> Regime:
    """The optimizer over the unwrapped model's parameters, and its scheduler (harness.core.recipes
    .TRAININGS describes each)."""
    parameters = list(unwrap(model).parameters())
    optimizer_name, scheduler_name = name.split("_")
    optimizer: torch.optim.Optimizer
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9)
    elif optimizer_name == "adam":
        optimizer = torch.optim.Adam(parameters, lr=0.01)
    elif optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=0.01)
    else:
        raise ValueError(f"unknown optimizer in training {name!r}")
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if scheduler_name == "steplr":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    elif scheduler_name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=0.05, total_steps=TOTAL_STEPS
        )
    else:
        raise ValueError(f"unknown scheduler in training {name!r}")
    return optimizer, scheduler


def train_steps(
    model: nn.Module,
    regime: Regime,
    data: torch.Generator,
    name: str,
    steps: int,
    *,
    loss_weight: float = 1.0,
) -> None:
    """``steps`` optimizer and scheduler steps on batches drawn from ``data`` (``loss_weight``
    scales the loss: a distributed run counts one rank's, see harness.worker.distributed)."""
    optimizer, scheduler = regime
    model.train()
    device = model_device(model)
    batch = example_input(name)
    for _ in range(steps):
        noisy = on_device(noised(batch, data), device)
        optimizer.zero_grad(set_to_none=True)
        backward(model, noisy, name, weight=loss_weight)
        optimizer.step()
        scheduler.step()
    model.eval()


def checkpoint(
    model: nn.Module, regime: Regime, data: torch.Generator, *, namespace_args: bool
) -> dict[str, Any]:
    optimizer, scheduler = regime
    args: Any = argparse.Namespace(**ARGS) if namespace_args else dict(ARGS)
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": RESUME_AT,
        "args": args,
        "rng": {
            "torch": torch.get_rng_state(),
            # every visible GPU's generator, as trainers keep them (an empty list on the CPU)
            "cuda": [torch.cuda.get_rng_state(gpu) for gpu in range(torch.cuda.device_count())],
            "data": data.get_state(),
        },
    }


def resume(
    model: nn.Module, state: dict[str, Any], training: str, name: str, *, rng: bool = True
) -> None:
    """Load a training state into ``model`` (any layout) and train the remaining steps.
    The optimizer and scheduler are built first and their states loaded after, as they must be:
    building OneCycleLR after loading would overwrite the restored learning rate. ``rng``: torch's
    generators are restored too (the CPU's, and each saved GPU's that this process sees); the
    known-bad ``resume_without_rng`` leaves them as the fresh process has them."""
    regime = make_regime(training, model)
    unwrap(model).load_state_dict(state["model"])
    regime[0].load_state_dict(state["optimizer"])
    regime[1].load_state_dict(state["lr_scheduler"])
    check_optimizer_devices(regime[0])
    if rng:
        torch.set_rng_state(state["rng"]["torch"])
        # a training state from before the GPUs' generators were kept has none
        saved_gpus = state["rng"].get("cuda", [])
        for gpu, gpu_state in enumerate(saved_gpus[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, gpu)
    data = torch.Generator()
    data.set_state(state["rng"]["data"])
    train_steps(model, regime, data, name, TOTAL_STEPS - int(state["epoch"]))


def check_optimizer_devices(optimizer: torch.optim.Optimizer) -> None:
    """Every optimizer state tensor on its parameter's device (``step`` is kept on the CPU by
    design unless the optimizer is capturable or fused)."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if key == "step" or not isinstance(value, torch.Tensor):
                continue
            if value.device != parameter.device:
                raise OptimizerStateDeviceError(
                    f"optimizer state {key!r} is on {value.device}, its parameter on "
                    f"{parameter.device}"
                )
