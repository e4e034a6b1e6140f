"""Model classes from real libraries (transformers, timm), built from small configurations with
random weights: nothing is downloaded. Each is a user's model as ``--model`` names it
(``ckpt_real_models:gpt2``), with this folder on PYTHONPATH; the factories return the libraries'
classes unchanged (their forward returns a ``ModelOutput``, a tuple or a tensor, as the library
decides). ``nox -s real`` runs the shipped scenarios over every one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

VOCAB = 64
TOKENS = (2, 8)  # batch, sequence

MODELS = ("gpt2", "llama", "bert", "t5", "vit", "timm_cnn", "timm_vit")


def _tokens(device: torch.device) -> torch.Tensor:
    return torch.randint(0, VOCAB, TOKENS).to(device)


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

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
    from transformers import LlamaConfig, LlamaForCausalLM

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
    from transformers import BertConfig, BertForMaskedLM

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
    from transformers import T5Config, T5ForConditionalGeneration

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
    from transformers import ViTConfig, ViTForImageClassification

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


def timm_cnn() -> nn.Module:
    import timm

    # BatchNorm, squeeze-excitation and hard-swish blocks; about 0.6 M parameters
    model: nn.Module = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4)
    return model


def _image32(device: torch.device) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32).to(device)


timm_cnn.example_input = _image32  # type: ignore[attr-defined]


def timm_vit() -> nn.Module:
    import timm

    model: nn.Module = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=4,
    )
    return model


timm_vit.example_input = _image32  # type: ignore[attr-defined]
