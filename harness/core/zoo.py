"""The model zoo's metadata: names and the traits the oracle reasons with.

The models themselves are built by :mod:`harness.worker.models` inside worker processes; this module
stays free of torch so the matrix and the oracle can be computed without it. A unit test builds
every model and checks these traits against its real state_dict keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.core.errors import UserError


@dataclass(frozen=True, kw_only=True)
class ModelTraits:
    """What the oracle reasons with about a model, measured from its real state_dict in a worker
    once per run (the zoo's models declare theirs too, and a test holds the two equal)."""

    # Some key of the unwrapped model starts with "module." (a top-level attribute named module).
    top_level_module_attr: bool
    # Some key contains "module." somewhere other than at its start (e.g. "encoder.submodule.w").
    nested_module_dot: bool
    # The model gives an input for its forward pass (a user's model may not).
    example_input: bool = True
    # Two names of the state_dict share one storage (tied weights).
    tied: bool = False
    # Some layer is parametrized (torch.nn.utils.parametrize): such a module refuses pickling.
    parametrized: bool = False
    # Its forward in train mode draws random numbers (dropout): a resumed training reaches the
    # uninterrupted run's weights only if the checkpoint carries the generators' states.
    stochastic: bool = False
    # Some entry is an integer tensor (BatchNorm's num_batches_tracked, an index buffer).
    integer_tensors: bool = False
    # The entries its construction fixes: equal across builds from different seeds and unchanged
    # by the saver's training (a constant buffer such as ``position_ids``). They are compared as
    # every entry is, but cannot tell a load from none.
    constants: tuple[str, ...] = ()
    # Why the workers cannot build it (a package its factory imports is not installed): its
    # cells are skipped with this reason. Empty for a model that was built and measured.
    unavailable: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "top_level_module_attr": self.top_level_module_attr,
            "nested_module_dot": self.nested_module_dot,
            "example_input": self.example_input,
            "tied": self.tied,
            "parametrized": self.parametrized,
            "stochastic": self.stochastic,
            "integer_tensors": self.integer_tensors,
            "constants": list(self.constants),
            **({"unavailable": self.unavailable} if self.unavailable else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelTraits:
        return cls(
            top_level_module_attr=bool(data["top_level_module_attr"]),
            nested_module_dot=bool(data["nested_module_dot"]),
            example_input=bool(data["example_input"]),
            tied=bool(data.get("tied", False)),
            parametrized=bool(data.get("parametrized", False)),
            stochastic=bool(data.get("stochastic", False)),
            integer_tensors=bool(data.get("integer_tensors", False)),
            constants=tuple(str(entry) for entry in data.get("constants", ())),
            unavailable=str(data.get("unavailable", "")),
        )


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    summary: str
    declared: ModelTraits | None  # the zoo's own; None for a user's model (measured only)
    needs_torchvision: bool = False
    # a real network (megabytes of weights, seconds to build and run): its cells cost more
    large: bool = False
    in_default_run: bool = True
    # it gives a tensor-parallel plan (harness.worker.meshes.TP_PLANS), which the tp layouts need
    tensor_parallel: bool = False
    # what a tensor-parallel degree must divide for the plan's splits to fit (the attention's
    # heads: a rank attends with whole heads)
    tensor_parallel_units: int = 1


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="trap",
            summary="tiny net: BatchNorm buffers, a layer named 'submodule', a float64 buffer",
            declared=ModelTraits(
                top_level_module_attr=False, nested_module_dot=True, integer_tensors=True
            ),
        ),
        ModelSpec(
            name="trap_module",
            summary="the trap net with its own top-level attribute literally named 'module'",
            declared=ModelTraits(
                top_level_module_attr=True, nested_module_dot=True, integer_tensors=True
            ),
        ),
        ModelSpec(
            name="dropout",
            summary="the trap net with dropout: its training draws random numbers",
            declared=ModelTraits(
                top_level_module_attr=False,
                nested_module_dot=True,
                stochastic=True,
                integer_tensors=True,
            ),
        ),
        ModelSpec(
            name="tied",
            summary="an embedding tied to the output projection: one storage, two names",
            declared=ModelTraits(top_level_module_attr=False, nested_module_dot=False, tied=True),
        ),
        ModelSpec(
            name="mixed_dtypes",
            summary="bfloat16 and float16 parameters, int64 and complex64 buffers, and a "
            "non-persistent buffer",
            # its non-persistent buffer is derived from the configuration, as such caches are
            declared=ModelTraits(
                top_level_module_attr=False,
                nested_module_dot=False,
                constants=("cache",),
                integer_tensors=True,
            ),
        ),
        ModelSpec(
            name="weight_norm",
            summary="a weight_norm parametrized layer (keys parametrizations.weight.original0/1)",
            declared=ModelTraits(
                top_level_module_attr=False, nested_module_dot=False, parametrized=True
            ),
        ),
        ModelSpec(
            name="block",
            summary="a transformer block (RMSNorm, causal attention with 4 heads, a SwiGLU MLP) "
            "whose attention and MLP take a tensor-parallel plan, as torchtitan writes them",
            declared=ModelTraits(top_level_module_attr=False, nested_module_dot=False),
            tensor_parallel=True,
            tensor_parallel_units=4,
        ),
        ModelSpec(
            name="resnet18",
            summary="torchvision's resnet18(weights=None, num_classes=10) written with torch.nn "
            "alone: bitwise torchvision's for the same seed, and no torchvision needed",
            declared=ModelTraits(
                top_level_module_attr=False, nested_module_dot=False, integer_tensors=True
            ),
            large=True,
        ),
        ModelSpec(
            name="resnet152",
            summary="torchvision resnet152(weights=None), seeded (241 MB; not in the default run)",
            declared=ModelTraits(
                top_level_module_attr=False, nested_module_dot=False, integer_tensors=True
            ),
            needs_torchvision=True,
            large=True,
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


# ``package.module:factory``: a user's model, built by calling ``factory()`` in a worker.
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_import_path(name: str) -> bool:
    return IMPORT_PATH.match(name) is not None


class ModelError(UserError):
    """A model that cannot be named, imported or built: the message says which and why."""


def model_spec(name: str, where: str) -> ModelSpec:
    """The zoo's model, or a user's model named by its import path (``package.module:factory``)."""
    if is_import_path(name):
        return ModelSpec(name=name, summary=f"the user's model {name}", declared=None)
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ModelError(
            f"{where}: unknown model {name!r}; the zoo has {known}, or name your own as "
            "package.module:factory (a function that takes no arguments and returns an nn.Module)"
        ) from None
