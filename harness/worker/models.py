"""Builds the zoo's models (see :mod:`harness.zoo` for their traits) and a user's (an import
path), trains them, wraps them."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.axes import Layout, Wrapper
from harness.zoo import ModelError, is_import_path


class Encoder(nn.Module):
    """A layer named ``submodule`` (the ``replace('module.', '')`` trap), BatchNorm buffers
    (including the int64 ``num_batches_tracked``) and a float64 buffer."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.submodule = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.register_buffer("scale", torch.randn(8, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.submodule(x))) * self.scale.to(x.dtype)


class TrapNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(x))
        return out


class ModuleAttrNet(nn.Module):
    """The trap net whose own top-level attribute is literally named ``module``."""

    def __init__(self) -> None:
        super().__init__()
        self.module = Encoder()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.module(x))
        return out


class TiedNet(nn.Module):
    """An embedding shared with the output projection: one storage, two names in the
    state_dict (``embed.weight``, ``out.weight``). Its input is token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 16, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.tanh(self.hidden(self.embed(tokens).mean(dim=1))))
        return out


class MixedNet(nn.Module):
    """bfloat16 and float16 parameters, an int64 and a complex64 buffer, and a non-persistent
    buffer (absent from the state_dict, present in a whole-model pickle)."""

    steps: torch.Tensor
    phase: torch.Tensor
    cache: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.bf16 = nn.Linear(8, 8).to(torch.bfloat16)
        self.fp16 = nn.Linear(8, 4).to(torch.float16)
        self.register_buffer("steps", torch.randint(0, 1000, (4,)))
        self.register_buffer("phase", torch.randn(4, dtype=torch.complex64))
        # derived from the configuration, as such caches are (rotary tables): a state_dict load
        # need not carry it
        self.register_buffer("cache", torch.linspace(0.5, 1.5, 4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.bf16(x.to(torch.bfloat16)).float()
        out: torch.Tensor = self.fp16(hidden.to(torch.float16)).float()
        return out * self.cache + self.phase.real + self.steps.float() / 1000


class NormNet(nn.Module):
    """A layer under ``torch.nn.utils.parametrizations.weight_norm``: its weight is stored as
    ``parametrizations.weight.original0`` (g) and ``original1`` (v); such a module refuses to be
    pickled whole."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.layer(x)))
        return out


def _resnet(depth: int) -> nn.Module:
    import torchvision  # only workers whose model needs it pay for the import

    factory = {18: torchvision.models.resnet18, 152: torchvision.models.resnet152}[depth]
    model: nn.Module = factory(weights=None, num_classes=10)
    return model


def imported(name: str) -> tuple[Any, Any]:
    """A user's model ``package.module:factory``: its module and its factory, imported as
    ``python -m`` finds modules (the current directory, then PYTHONPATH)."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"model {name}: cannot import {module_name!r}: {type(exc).__name__}: {exc} "
            f"(the worker looks in {Path.cwd()} and PYTHONPATH="
            f"{os.environ.get('PYTHONPATH', '')!r})"
        ) from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"model {name}: {module_name} has no function {attribute!r}")
    return module, factory


def build(name: str, *, seed: int) -> nn.Module:
    """A fresh model, its random initialisation fixed by ``seed``."""
    torch.manual_seed(seed)
    if is_import_path(name):
        _, factory = imported(name)
        try:
            model = factory()
        except Exception as exc:
            raise ModelError(f"model {name}: {name}() raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"model {name}: {name}() returned {type(model).__name__}, not an nn.Module"
            )
        return model
    if name == "trap":
        return TrapNet()
    if name == "trap_module":
        return ModuleAttrNet()
    if name == "tied":
        return TiedNet()
    if name == "mixed_dtypes":
        return MixedNet()
    if name == "weight_norm":
        return NormNet()
    if name == "resnet18":
        return _resnet(18)
    if name == "resnet152":
        return _resnet(152)
    raise ValueError(f"the worker cannot build model {name!r}")


def user_example_input(name: str) -> Callable[[torch.device], Any] | None:
    """A user's model's ``example_input(device)``: an attribute of the factory, else
    ``package.module:example_input``; None where it gives none."""
    module, factory = imported(name)
    found = getattr(factory, "example_input", None) or getattr(module, "example_input", None)
    return found if callable(found) else None


def has_example_input(name: str) -> bool:
    return not is_import_path(name) or user_example_input(name) is not None


def example_input(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The model's fixed input, drawn on the CPU (same numbers everywhere), then moved; a user's
    model's own ``example_input(device)`` (seeded the same way before it is called)."""
    if is_import_path(name):
        make = user_example_input(name)
        if make is None:
            raise ModelError(f"model {name}: no example_input (see has_example_input)")
        with torch.random.fork_rng(devices=[]):  # the same numbers, the run's RNG untouched
            torch.manual_seed(1234)
            batch = make(torch.device(device))
        if not isinstance(batch, torch.Tensor):
            raise ModelError(
                f"model {name}: example_input returned {type(batch).__name__}, not a tensor"
            )
        return batch.to(device)
    generator = torch.Generator().manual_seed(1234)
    if name == "tied":
        return torch.randint(0, 16, (4, 5), generator=generator).to(device)
    if name.startswith("resnet"):
        batch = torch.randn(2, 3, 32, 32, generator=generator)
    else:
        batch = torch.randn(4, 8, generator=generator)
    return batch.to(device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def wrap(model: nn.Module, layout: Layout, wrapper: Wrapper = Wrapper.NONE) -> nn.Module:
    """``layout(wrapper(model))``: DataParallel(torch.compile(model)) keys read
    ``module._orig_mod.``. torch.compile uses the eager backend: the forward pass needs no C++
    toolchain and runs the same kernels as the plain model."""
    if wrapper is Wrapper.COMPILE:
        model = torch.compile(model, backend="eager")  # type: ignore[assignment]
    elif wrapper is Wrapper.CHECKPOINT:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            checkpoint_wrapper,
        )

        model = checkpoint_wrapper(model)
    if layout is Layout.DP:
        return nn.DataParallel(model)
    return model


def _wrapped(model: nn.Module) -> nn.Module | None:
    """The module a wrapper holds, by the wrapper's type (never by attribute name), or None. A
    wrapper's module is looked up only once it is imported: no wrapper exists before that."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        inner: nn.Module = model.module
        return inner
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        compiled: nn.Module = model._orig_mod
        return compiled
    wrappers = sys.modules.get("torch.distributed.algorithms._checkpoint.checkpoint_wrapper")
    if wrappers is not None and isinstance(model, wrappers.ActivationWrapper):
        checkpointed: nn.Module = model._checkpoint_wrapped_module
        return checkpointed
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any DataParallel, DistributedDataParallel, torch.compile or
    checkpoint_wrapper wrappers, however stacked."""
    while (inner := _wrapped(model)) is not None:
        model = inner
    return model


def noised(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A training batch: the fixed input plus seeded noise (an integer input, such as token ids,
    is used as it is; the generator still advances, so the data order is the same)."""
    noise = 0.1 * torch.randn(batch.shape, generator=generator)
    return batch + noise.to(batch.dtype) if batch.is_floating_point() else batch


def perturb(model: nn.Module) -> None:
    """Move every parameter and buffer off its initial value (seeded): what training does for a
    model that gives no example input, so that a load that does nothing is still caught."""
    generator = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() or tensor.is_complex():
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
                tensor.add_((0.01 * noise).to(tensor.device, tensor.dtype))
            elif tensor.dtype is torch.bool:  # a mask
                tensor.logical_not_()
            else:
                tensor.add_(1)


def train(model: nn.Module, name: str, *, steps: int, lr: float = 0.1) -> None:
    """A few plain SGD steps in train mode, so weights and BatchNorm statistics leave their
    defaults (a model with no example input is perturbed instead). The update is written out
    rather than taken from torch.optim, whose first ``zero_grad``/``step`` imports torch._dynamo
    (measured: +1.0 s per save worker)."""
    if not has_example_input(name):
        perturb(model)
        return
    model.train()
    generator = torch.Generator().manual_seed(99)
    device = model_device(model)
    batch = example_input(name)
    for _ in range(steps):
        noisy = noised(batch, generator).to(device)
        model.zero_grad(set_to_none=True)
        model(noisy).pow(2).mean().backward()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter.sub_(lr * parameter.grad)
    model.zero_grad(set_to_none=True)
    model.eval()
