"""Prefixes and recommendations: pure functions of what a reader found."""

from __future__ import annotations

import pytest

from harness.inspect import Contents, FileFormat, TensorEntry
from harness.inspect.advice import prefixes, recommendations


def found(
    *paths: str,
    location: str = "cpu",
    refused: tuple[str, ...] = (),
    fmt: FileFormat = FileFormat.ZIP,
    groups: tuple[str, ...] = (),
) -> Contents:
    return Contents(
        format=fmt,
        groups=list(groups),
        globals=list(refused),
        tensors=[
            TensorEntry(path=p, dtype="float32", shape=(1,), bytes=4, location=location)
            for p in paths
        ],
        refused=list(refused),
    )


def test_a_wrapper_prefix_on_every_key_is_stripped() -> None:
    (finding,) = prefixes(found("module.fc.weight", "module.fc.bias"))
    assert (finding.prefix, finding.verdict, finding.keys, finding.total) == (
        "module.",
        "strip",
        2,
        2,
    )
    (advice,) = recommendations(found("module.fc.weight", "module.fc.bias"), gpus=0)
    assert "consume_prefix_in_state_dict_if_present(state_dict, 'module.')" in advice


def test_a_model_attribute_named_module_is_not_a_prefix() -> None:
    (finding,) = prefixes(found("module.weight", "head.weight"))
    assert finding.verdict == "not_a_prefix"
    assert "do not strip" in finding.message
    assert recommendations(found("module.weight", "head.weight"), gpus=0) == []


def test_twice_is_ambiguous_and_inner_names_are_warned_of() -> None:
    (twice,) = prefixes(found("module.module.w", "module.head.w"))
    assert twice.verdict == "ambiguous"
    assert "strip one level at most" in twice.message
    findings = prefixes(found("encoder.module.w", "head.w"))
    assert [f.verdict for f in findings] == ["ambiguous"]
    assert "key.replace('module.', '') would break them" in findings[0].message


def test_prefixes_inside_a_training_checkpoint() -> None:
    paths = ("model._orig_mod.fc.w", "model._orig_mod.fc.b", "optimizer.state.0.w")
    findings = prefixes(found(*paths, groups=("model", "optimizer")))
    assert [(f.group, f.prefix, f.verdict) for f in findings] == [("model", "_orig_mod.", "strip")]
    # the same names in a flat state_dict: 'model' is an attribute, not a mapping to fix inside
    assert prefixes(found(*paths)) == []
    advice = recommendations(found(*paths[:2], groups=("model",)), gpus=1)
    assert "checkpoint['model'], '_orig_mod.'" in advice[0]


@pytest.mark.parametrize(
    ("location", "gpus", "advice"),
    [
        ("cuda:1", 0, "map_location='cpu'"),
        ("cuda:1", 1, "map_location={'cuda:1': 'cuda:0'}"),
        ("cuda:1", 2, None),
        ("cpu", 0, None),
    ],
)
def test_map_location_for_devices_the_machine_lacks(
    location: str, gpus: int, advice: str | None
) -> None:
    given = recommendations(found("w", location=location), gpus=gpus)
    if advice is None:
        assert given == []
    else:
        (text,) = given
        assert advice in text


def test_safe_globals_for_harmless_ones_and_never_for_code() -> None:
    (harmless,) = recommendations(found("w", refused=("argparse.Namespace",)), gpus=0)
    assert "safe_globals([argparse.Namespace])" in harmless
    assert "never weights_only=False" in harmless
    (danger,) = recommendations(found("w", refused=("argparse.Namespace", "posix.system")), gpus=0)
    assert danger.startswith("do not load this file: it names posix.system")
    (dcp,) = recommendations(found("w", refused=("mymod.Thing",), fmt=FileFormat.DCP), gpus=0)
    assert "pickle.load" in dcp
