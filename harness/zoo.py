"""The model zoo's metadata: names and the traits the oracle reasons with.

The models themselves are built by :mod:`harness.worker.models` inside worker processes; this module
stays free of torch so the matrix and the oracle can be computed without it. A unit test builds
every model and checks these traits against its real state_dict keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    summary: str
    # Some key of the unwrapped model starts with "module." (a top-level attribute named module).
    top_level_module_attr: bool
    # Some key contains "module." somewhere other than at its start (e.g. "encoder.submodule.w").
    nested_module_dot: bool
    needs_torchvision: bool = False
    in_default_run: bool = True

    @property
    def any_key_contains_module_dot(self) -> bool:
        return self.top_level_module_attr or self.nested_module_dot


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="trap",
            summary="tiny net: BatchNorm buffers, a layer named 'submodule', a float64 buffer",
            top_level_module_attr=False,
            nested_module_dot=True,
        ),
        ModelSpec(
            name="trap_module",
            summary="the trap net with its own top-level attribute literally named 'module'",
            top_level_module_attr=True,
            nested_module_dot=True,
        ),
        ModelSpec(
            name="resnet18",
            summary="torchvision resnet18(weights=None), seeded",
            top_level_module_attr=False,
            nested_module_dot=False,
            needs_torchvision=True,
        ),
        ModelSpec(
            name="resnet152",
            summary="torchvision resnet152(weights=None), seeded (241 MB; not in the default run)",
            top_level_module_attr=False,
            nested_module_dot=False,
            needs_torchvision=True,
            in_default_run=False,
        ),
    )
}


def key_traits(keys: Iterable[str]) -> tuple[bool, bool]:
    """(a key starts with "module.", a key contains "module." after its first character): the
    two traits the oracle reasons with, computed from real keys."""
    listed = list(keys)
    return (
        any(key.startswith("module.") for key in listed),
        any("module." in key[1:] for key in listed),
    )


def model_spec(name: str, where: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"{where}: unknown model {name!r}; the zoo has {known}") from None
