"""A sharded safetensors checkpoint written by transformers' ``save_pretrained``: a tiny GPT-2
(tied embeddings, random weights) in shards of 20 KB at most, with its config.json beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

INDEX = "model.safetensors.index.json"


def save_gpt2(folder: Path) -> Path:
    """``folder``, holding the shards, their index and the config; skips the calling test where
    transformers (the real dependency group) is not installed."""
    transformers = pytest.importorskip(
        "transformers", reason="transformers (the real dependency group) writes the shards"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        config = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=16, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
        model.save_pretrained(folder, max_shard_size="20KB", safe_serialization=True)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2, "too few shards to break"
    return folder
