"""Model classes of transformers (GPT-2, Llama, BERT, T5, ViT), built from small configurations
with random weights: nothing is downloaded. Each is a user's model as ``--model`` names it
(``ckpt_hf_models:gpt2``), with this folder on PYTHONPATH, and is imported as users' modules are:
the library at the top. The factories return the library's classes unchanged (their forward
returns a ``ModelOutput``). ``nox -s real`` runs the shipped scenarios over every one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 64
TOKENS = (2, 8)  # batch, sequence

MODELS = ("gpt2", "llama", "bert", "t5", "vit")


def _tokens(device: torch.device) -> torch.Tensor:
    return torch.randint(0, VOCAB, TOKENS).to(device)


def gpt2() -> nn.Module:
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model: nn.Module = GPT2LMHeadModel(config)
    return model


gpt2.example_input = _tokens  # type: ignore[attr-defined]


def llama() -> nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model: nn.Module = LlamaForCausalLM(config)
    return model


llama.example_input = _tokens  # type: ignore[attr-defined]


def bert() -> nn.Module:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model: nn.Module = BertForMaskedLM(config)
    return model


bert.example_input = _tokens  # type: ignore[attr-defined]


def t5() -> nn.Module:
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
    )
    model: nn.Module = T5ForConditionalGeneration(config)
    return model


def _t5_input(device: torch.device) -> dict[str, Any]:
    # an encoder-decoder takes keyword arguments: the encoder's and the decoder's tokens
    return {"input_ids": _tokens(device), "decoder_input_ids": _tokens(device)}


t5.example_input = _t5_input  # type: ignore[attr-defined]


def vit() -> nn.Module:
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    model: nn.Module = ViTForImageClassification(config)
    return model


def _image(device: torch.device) -> torch.Tensor:
    return torch.randn(2, 3, 16, 16).to(device)


vit.example_input = _image  # type: ignore[attr-defined]
