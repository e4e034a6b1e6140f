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
