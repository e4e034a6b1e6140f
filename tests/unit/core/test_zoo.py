from __future__ import annotations

import pytest

from harness.core.zoo import MODELS, is_import_path, model_spec


def test_default_run_excludes_resnet152() -> None:
    assert not MODELS["resnet152"].in_default_run
    assert {"trap", "trap_module", "resnet18"} <= {n for n, s in MODELS.items() if s.in_default_run}


def test_unknown_model_names_place_and_zoo() -> None:
    with pytest.raises(
        ValueError,
        match=r"s\.toml\.models: unknown model 'vgg'; the zoo has block, dropout, mixed_dtypes",
    ):
        model_spec("vgg", "s.toml.models")


@pytest.mark.parametrize(
    ("name", "imported"),
    [
        ("my_pkg.models:build", True),
        ("models:build", True),
        ("trap", False),
        ("my-pkg:build", False),
        ("pkg.:build", False),
        ("pkg:build:x", False),
    ],
)
def test_an_import_path_names_a_users_model(name: str, imported: bool) -> None:
    assert is_import_path(name) is imported
    if imported:
        spec = model_spec(name, "here")
        assert spec.declared is None  # measured in a worker, never declared
        assert not spec.needs_torchvision
