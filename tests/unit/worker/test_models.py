"""The zoo's declared traits against the real models' keys (imports torch in this process)."""

from __future__ import annotations

import pytest
import torch

from harness.axes import Layout
from harness.worker.models import build, train, unwrap, wrap
from harness.zoo import MODELS, key_traits

CHEAP = ["trap", "trap_module", "resnet18"]


@pytest.mark.parametrize("name", CHEAP)
def test_declared_traits_match_the_real_keys(name: str) -> None:
    spec = MODELS[name]
    traits = key_traits(build(name, seed=0).state_dict())
    assert traits == (spec.top_level_module_attr, spec.nested_module_dot)


def test_trap_models_carry_their_traps() -> None:
    keys = set(build("trap", seed=0).state_dict())
    assert {"encoder.submodule.weight", "encoder.bn.num_batches_tracked", "encoder.scale"} <= keys
    assert build("trap", seed=0).state_dict()["encoder.bn.num_batches_tracked"].dtype == torch.int64
    assert build("trap", seed=0).state_dict()["encoder.scale"].dtype == torch.float64
    assert "module.submodule.weight" in build("trap_module", seed=0).state_dict()


def test_seeds_and_training_move_every_tensor() -> None:
    saver = build("trap", seed=0)
    train(saver, "trap", steps=3)
    loader = build("trap", seed=1)
    saved, fresh = saver.state_dict(), loader.state_dict()
    assert saved["encoder.bn.num_batches_tracked"].item() == 3
    same = [k for k in saved if torch.equal(saved[k], fresh[k])]
    assert same == []


def test_wrap_and_unwrap_by_type_not_attribute_name() -> None:
    model = build("trap_module", seed=0)
    wrapped = wrap(model, Layout.DP)
    assert isinstance(wrapped, torch.nn.DataParallel)
    assert unwrap(wrapped) is model
    assert unwrap(model) is model  # its own .module attribute is not a wrapper
    assert next(iter(wrapped.state_dict())).startswith("module.module.")
