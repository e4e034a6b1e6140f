"""A model from outside the zoo, for the tests of ``--model package.module:factory``: a top-level
attribute named ``module`` (the prefix trap), tied weights (an embedding shared with the output
projection: one storage, two names) and a BatchNorm. Importable with this folder on PYTHONPATH."""

from __future__ import annotations

import torch
from torch import nn


class TiedModuleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.module = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.out = nn.Linear(8, 16, bias=False)
        self.out.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.module(self.embed(tokens).mean(dim=1))
        logits: torch.Tensor = self.out(hidden)
        return logits


def build() -> nn.Module:
    return TiedModuleNet()


def example_input(device: torch.device) -> torch.Tensor:
    return torch.randint(0, 16, (4, 5)).to(device)


def not_a_model() -> object:
    return "a string"


def broken() -> nn.Module:
    raise RuntimeError("the factory's own bug")


class Block(nn.Module):
    """A block whose own attribute is named ``module``."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)  # its num_batches_tracked is an int64 buffer that moves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.relu(self.norm(self.module(x)))
        return out


class ConstantsNet(nn.Module):
    """What real models carry: a constant integer buffer fixed by the constructor (as
    ``position_ids`` are), tied weights, attributes named ``module`` at the top and nested
    (``module.0.module.weight``), integer buffers, dropout, and a forward that returns a dict,
    not a tensor."""

    position_ids: torch.Tensor
    counts: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.register_buffer("position_ids", torch.arange(5, dtype=torch.int32))
        self.register_buffer("counts", torch.arange(3, dtype=torch.int32))
        self.position = nn.Embedding(5, 8)
        self.module = nn.ModuleList([Block(), Block()])
        self.dropout = nn.Dropout(0.1)
        self.out = nn.Linear(8, 16, bias=False)
        self.out.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.embed(tokens) + self.position(self.position_ids.long())
        pooled = self.dropout(hidden.mean(dim=1)) * (1 + self.counts.sum())
        for block in self.module:
            pooled = block(pooled)
        return {"logits": self.out(pooled), "hidden": pooled}


def constants() -> nn.Module:
    return ConstantsNet()


constants.example_input = example_input  # type: ignore[attr-defined]


class CannotRun(nn.Module):
    """Builds, but its forward fails on the input it gives: a run must stop before any cell."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(tokens)  # token ids are integers: matmul refuses them
        return out


def cannot_run() -> nn.Module:
    return CannotRun()


cannot_run.example_input = example_input  # type: ignore[attr-defined]


def needs_a_missing_library() -> nn.Module:
    import ckpt_matrix_no_such_library  # type: ignore[import-not-found]  # noqa: F401

    return TiedModuleNet()
