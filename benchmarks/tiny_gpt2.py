"""A small transformers model as a user's model, for ``benchmarks/user_model.py``:
``tiny_gpt2:build`` (this folder on PYTHONPATH) is GPT-2 from a tiny ``GPT2Config`` (2 layers,
width 32, 2 heads, 64 tokens, 32 positions), random weights, nothing downloaded. Its forward
returns the logits tensor rather than transformers' ``ModelOutput``. What it costs a worker
beyond the zoo's models is the module's import: ``from transformers import ...``."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB = 64


class TinyGPT2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        self.gpt2 = GPT2LMHeadModel(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.gpt2(tokens).logits
        return logits


def build() -> nn.Module:
    return TinyGPT2()


def example_input(device: torch.device) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 8), device=device)
