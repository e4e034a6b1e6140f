"""A user's model with no example input: the harness perturbs it instead of training it, and
compares no forward output (the tensors are still compared)."""

from __future__ import annotations

from torch import nn


class Plain(nn.Module):
    """No example input: the harness perturbs it instead of training it, and compares no
    forward output."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(3)


def build() -> nn.Module:
    return Plain()
