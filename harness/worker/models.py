"""Builds the zoo's models (see :mod:`harness.zoo` for their traits), trains them, wraps them."""

from __future__ import annotations

import torch
from torch import nn

from harness.axes import Layout


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


def _resnet(depth: int) -> nn.Module:
    import torchvision  # only workers whose model needs it pay for the import

    factory = {18: torchvision.models.resnet18, 152: torchvision.models.resnet152}[depth]
    model: nn.Module = factory(weights=None, num_classes=10)
    return model


def build(name: str, *, seed: int) -> nn.Module:
    """A fresh model, its random initialisation fixed by ``seed``."""
    torch.manual_seed(seed)
    if name == "trap":
        return TrapNet()
    if name == "trap_module":
        return ModuleAttrNet()
    if name == "resnet18":
        return _resnet(18)
    if name == "resnet152":
        return _resnet(152)
    raise ValueError(f"the worker cannot build model {name!r}")


def example_input(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The model's fixed input, drawn on the CPU (same numbers everywhere), then moved."""
    generator = torch.Generator().manual_seed(1234)
    if name.startswith("resnet"):
        batch = torch.randn(2, 3, 32, 32, generator=generator)
    else:
        batch = torch.randn(4, 8, generator=generator)
    return batch.to(device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def wrap(model: nn.Module, layout: Layout) -> nn.Module:
    if layout is Layout.DP:
        return nn.DataParallel(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any DataParallel or DistributedDataParallel wrappers (by type, never by
    attribute name)."""
    while isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def train(model: nn.Module, name: str, *, steps: int, lr: float = 0.1) -> None:
    """A few plain SGD steps in train mode, so weights and BatchNorm statistics leave their
    defaults. The update is written out rather than taken from torch.optim, whose first
    ``zero_grad``/``step`` imports torch._dynamo (measured: +1.0 s per save worker)."""
    model.train()
    generator = torch.Generator().manual_seed(99)
    device = model_device(model)
    batch = example_input(name)
    for _ in range(steps):
        noisy = (batch + 0.1 * torch.randn(batch.shape, generator=generator)).to(device)
        model.zero_grad(set_to_none=True)
        model(noisy).pow(2).mean().backward()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter.sub_(lr * parameter.grad)
    model.zero_grad(set_to_none=True)
    model.eval()
