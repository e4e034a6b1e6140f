from __future__ import annotations

import pytest

from harness.zoo import MODELS, model_spec


def test_default_run_excludes_resnet152() -> None:
    assert not MODELS["resnet152"].in_default_run
    assert {"trap", "trap_module", "resnet18"} <= {n for n, s in MODELS.items() if s.in_default_run}


def test_unknown_model_names_place_and_zoo() -> None:
    with pytest.raises(
        ValueError, match=r"s\.toml\.models: unknown model 'vgg'; the zoo has resnet152"
    ):
        model_spec("vgg", "s.toml.models")
