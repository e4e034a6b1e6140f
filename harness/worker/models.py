"""Builds the zoo's models (see :mod:`harness.core.zoo` for their traits) and a user's (an import
path), trains them, wraps them."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.axes import Layout, Wrapper
from harness.core.zoo import ModelError, is_import_path


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


class DropoutNet(nn.Module):
    """The trap net with dropout: its forward in train mode draws random numbers, so a resumed
    training reaches the uninterrupted run only with the generators' states restored."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(self.encoder(x)))
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


class Attention(nn.Module):
    """Causal self-attention whose projections a tensor-parallel plan splits by head: the heads
    are counted from the projection's output (``view(..., -1, head_dim)``), so a rank holding
    a column shard of ``wq``, ``wk`` and ``wv`` attends with its own heads."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (
            projection(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
            for projection in (self.wq, self.wk, self.wv)
        )
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.wo(attended.transpose(1, 2).reshape(batch, length, -1))
        return out


class FeedForward(nn.Module):
    """A SwiGLU MLP: ``w2(silu(w1(x)) * w3(x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))
        return out


class Block(nn.Module):
    """A transformer block as large models stack them: RMSNorm, attention, RMSNorm, MLP, each
    with its residual. Its input is (batch, tokens, 16)."""

    def __init__(self, dim: int = 16, heads: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(dim)
        self.attention = Attention(dim, heads)
        self.ffn_norm = nn.RMSNorm(dim)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        out: torch.Tensor = h + self.feed_forward(self.ffn_norm(h))
        return out


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions with batch norm, and a 1x1
    projection where the block changes stride or width."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNet18(nn.Module):
    """torchvision's ``resnet18(weights=None, num_classes=10)`` written with torch.nn alone: the
    same modules built in the same order and initialised as torchvision initialises them, so the
    same seed gives the same state_dict, key for key and bit for bit (tested where torchvision is
    installed), and the vision cells run under a torch no torchvision is built for."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths, inplanes = (64, 128, 256, 512), 64
        for index, planes in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            setattr(self, f"layer{index}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


def _resnet152() -> nn.Module:
    import torchvision  # only workers whose model needs it pay for the import

    model: nn.Module = torchvision.models.resnet152(weights=None, num_classes=10)
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
    if name == "dropout":
        return DropoutNet()
    if name == "tied":
        return TiedNet()
    if name == "mixed_dtypes":
        return MixedNet()
    if name == "weight_norm":
        return NormNet()
    if name == "block":
        return Block()
    if name == "resnet18":
        return ResNet18()
    if name == "resnet152":
        return _resnet152()
    raise ValueError(f"the worker cannot build model {name!r}")


def user_example_input(name: str) -> Callable[[torch.device], Any] | None:
    """A user's model's ``example_input(device)``: an attribute of the factory, else
    ``package.module:example_input``; None where it gives none."""
    module, factory = imported(name)
    found = getattr(factory, "example_input", None) or getattr(module, "example_input", None)
    return found if callable(found) else None


def has_example_input(name: str) -> bool:
    return not is_import_path(name) or user_example_input(name) is not None


# A model's input: a tensor, a tuple of positional arguments or a dict of keyword arguments.
Batch = torch.Tensor | tuple[Any, ...] | dict[str, Any]


def example_input(name: str, device: torch.device | str = "cpu") -> Batch:
    """The model's fixed input, drawn on the CPU (same numbers everywhere), then moved; a user's
    model's own ``example_input(device)`` (seeded the same way before it is called): a tensor, a
    tuple (positional arguments) or a dict (keyword arguments)."""
    if is_import_path(name):
        make = user_example_input(name)
        if make is None:
            raise ModelError(f"model {name}: no example_input (see has_example_input)")
        with torch.random.fork_rng(devices=[]):  # the same numbers, the run's RNG untouched
            torch.manual_seed(1234)
            batch = make(torch.device(device))
        moved: Batch = map_tensors(checked_batch(batch, name), lambda tensor: tensor.to(device))
        return moved
    generator = torch.Generator().manual_seed(1234)
    if name == "tied":
        return torch.randint(0, 16, (4, 5), generator=generator).to(device)
    if name.startswith("resnet"):
        batch = torch.randn(2, 3, 32, 32, generator=generator)
    elif name == "block":
        batch = torch.randn(2, 6, 16, generator=generator)
    else:
        batch = torch.randn(4, 8, generator=generator)
    return batch.to(device)


def checked_batch(batch: object, name: str) -> Batch:
    """``batch`` if it is a tensor, a tuple or list (positional arguments) or a dict with string
    keys (keyword arguments) holding at least one tensor; else the ModelError that says so."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, dict) and not all(isinstance(key, str) for key in batch):
        raise ModelError(
            f"model {name}: example_input returned a dict whose keys are not all strings; "
            "return a dict of keyword arguments, a tuple of positional ones or a tensor"
        )
    if not isinstance(batch, torch.Tensor | tuple | dict):
        raise ModelError(
            f"model {name}: example_input returned {type(batch).__name__}; return a tensor, a "
            "tuple (positional arguments) or a dict (keyword arguments)"
        )
    if not any(True for _ in leaves(batch)):
        raise ModelError(f"model {name}: example_input returned no tensor ({type(batch).__name__})")
    return batch


def call(model: nn.Module, batch: Batch) -> Any:
    """The model's forward on ``batch``: a dict as keyword arguments, a tuple as positional
    ones, a tensor as the one argument."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, tuple):
        return model(*batch)
    return model(batch)


def map_tensors(value: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with every tensor in its tuples, lists and dicts replaced by ``change(tensor)``."""
    if isinstance(value, torch.Tensor):
        return change(value)
    if isinstance(value, dict):
        return {key: map_tensors(item, change) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(map_tensors(item, change) for item in value)
    return value


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a forward output or an input, by its path (``logits``,
    ``past_key_values.layers.0.keys``): tensors, tuples, lists, dicts (a transformers
    ``ModelOutput`` is one, holding its fields that are not None), dataclasses and other plain
    objects' attributes (a key-value cache); each object once, modules never."""
    yield from _leaves(value, path, set())


def _leaves(value: Any, path: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
        return
    if id(value) in seen or isinstance(value, nn.Module | str | bytes | int | float | bool):
        return
    seen.add(id(value))
    items: list[tuple[str, Any]]
    if isinstance(value, Mapping):
        items = [(str(key), item) for key, item in value.items()]
    elif isinstance(value, tuple | list):
        items = [(str(index), item) for index, item in enumerate(value)]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(field.name, getattr(value, field.name)) for field in dataclasses.fields(value)]
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        items = list(vars(value).items())
    else:
        return
    for key, item in items:
        yield from _leaves(item, f"{path}.{key}" if path else key, seen)


def training_loss(output: Any, name: str) -> torch.Tensor:
    """The saver's training loss from a forward output of any shape: the mean square of every
    floating-point (or complex) tensor in it that carries a gradient, summed."""
    terms = [
        (torch.view_as_real(tensor) if tensor.is_complex() else tensor).pow(2).mean()
        for _, tensor in leaves(output)
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.requires_grad
    ]
    if not terms:
        raise ModelError(
            f"model {name}: its forward returned no floating-point tensor that depends on its "
            f"parameters ({type(output).__name__}), so it cannot be trained"
        )
    return torch.stack([term.float() for term in terms]).sum()


def backward(model: nn.Module, batch: Batch, name: str, *, weight: float = 1.0) -> None:
    """One training forward on ``batch`` and the backward of its loss (scaled by ``weight``:
    a distributed run counts one rank's, see harness.worker.distributed)."""
    loss = training_loss(call(model, batch), name) * weight
    loss.backward()  # type: ignore[no-untyped-call]


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


def noised(batch: Batch, generator: torch.Generator) -> Batch:
    """A training batch: the fixed input with seeded noise added to every floating-point tensor
    in it (an integer tensor, such as token ids, is used as it is; the generator still advances,
    so the data order is the same)."""

    def noisy(tensor: torch.Tensor) -> torch.Tensor:
        noise = 0.1 * torch.randn(tensor.shape, generator=generator)
        if tensor.is_floating_point():
            return tensor + noise.to(tensor.device, tensor.dtype)
        return tensor

    changed: Batch = map_tensors(batch, noisy)
    return changed


def on_device(batch: Batch, device: torch.device) -> Batch:
    moved: Batch = map_tensors(batch, lambda tensor: tensor.to(device))
    return moved


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
    (what that costs a save worker: docs/performance.md)."""
    if not has_example_input(name):
        perturb(model)
        return
    model.train()
    generator = torch.Generator().manual_seed(99)
    device = model_device(model)
    batch = example_input(name)
    for _ in range(steps):
        noisy = on_device(noised(batch, generator), device)
        model.zero_grad(set_to_none=True)
        backward(model, noisy, name)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter.sub_(lr * parameter.grad)
    model.zero_grad(set_to_none=True)
    model.eval()
