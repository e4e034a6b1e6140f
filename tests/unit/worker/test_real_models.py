"""Model classes of real libraries (tests/data/real_models: transformers and timm, small
configurations, random weights) as a user's models: measured, trained and run as they are,
whatever their forward returns. The whole matrix over them is ``nox -s real``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from harness.worker.fingerprint import output_digest
from harness.worker.models import build, train
from harness.worker.probe import measure_model

REAL_MODELS = Path(__file__).parents[2] / "data" / "real_models"

# What each one's measurement must find: tied weights, dropout, entries its constructor fixes.
EXPECTED = {
    "ckpt_hf_models:gpt2": {"tied": True, "stochastic": True, "constants": []},
    "ckpt_hf_models:llama": {
        "tied": False,
        "stochastic": False,
        "constants": ["model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"],
    },
    "ckpt_hf_models:bert": {
        "tied": True,
        "stochastic": True,
        "constants": ["bert.embeddings.position_ids", "bert.embeddings.token_type_ids"],
    },
    "ckpt_hf_models:t5": {"tied": True, "stochastic": True, "constants": []},
    "ckpt_hf_models:vit": {"tied": False, "stochastic": False, "constants": []},
    "ckpt_timm_models:cnn": {"tied": False, "stochastic": False, "constants": []},
    "ckpt_timm_models:vit": {"tied": False, "stochastic": False, "constants": []},
}


@pytest.fixture(autouse=True)
def _real_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REAL_MODELS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_every_listed_factory_is_checked_here() -> None:
    listed = {
        f"{module}:{name}"
        for module in ("ckpt_hf_models", "ckpt_timm_models")
        for name in importlib.import_module(module).MODELS
    }
    assert listed == set(EXPECTED)
    assert {path.stem for path in REAL_MODELS.glob("ckpt_*.py")} == {
        "ckpt_hf_models",
        "ckpt_timm_models",
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_real_model_is_measured_as_it_is(name: str) -> None:
    model = name
    measured = measure_model(model)
    assert "error" not in measured, measured.get("error")
    traits = measured["traits"]
    assert {key: traits[key] for key in EXPECTED[name]} == EXPECTED[name]
    assert traits["example_input"] is True
    assert "unavailable" not in traits


@pytest.mark.parametrize("model", ["ckpt_hf_models:gpt2", "ckpt_hf_models:t5"])
def test_a_model_output_is_compared_and_trained_on_whole(model: str) -> None:
    """GPT-2 returns a ModelOutput with a key-value cache, T5 takes keyword arguments."""
    saver, again, other = build(model, seed=0), build(model, seed=0), build(model, seed=1)
    assert output_digest(saver, model) == output_digest(again, model)
    assert output_digest(saver, model) != output_digest(other, model)
    before = {key: value.clone() for key, value in saver.state_dict().items()}
    train(saver, model, steps=1)
    after = saver.state_dict()
    moved = [key for key, value in after.items() if not torch.equal(value, before[key])]
    assert len(moved) > len(before) // 2  # the loss reached the weights
    assert output_digest(saver, model) != output_digest(again, model)
