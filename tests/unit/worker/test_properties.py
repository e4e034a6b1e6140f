"""Property-based tests over generated module trees (hypothesis).

Trees have random depth, attribute names drawn to include the traps (``module``, ``submodule``,
``my_module``, digits), nested DataParallel wrappers, six dtypes, tied parameters, persistent and
non-persistent buffers, and non-contiguous parameters. Profiles live in the root conftest.py:
``ci`` (derandomized, the default) and ``thorough``.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.core.zoo import key_traits
from harness.worker.fingerprint import fingerprint, tensor_digest
from harness.worker.models import unwrap

NAMES = ["module", "submodule", "my_module", "layer", "encoder", "0", "1", "head"]
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DTYPES = [*FLOATS, torch.int64, torch.bool]


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> Any:
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype is torch.int64:
        return torch.randint(-100, 100, shape, generator=generator)
    return torch.randn(shape, generator=generator).to(dtype)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0, seed: int | None = None) -> nn.Module:
    generator = torch.Generator().manual_seed(
        seed if seed is not None else draw(st.integers(0, 2**16))
    )
    module = nn.Module()
    names = draw(
        st.lists(st.sampled_from(NAMES), min_size=1 if depth == 0 else 0, max_size=3, unique=True)
    )
    linears: list[nn.Linear] = []
    for name in names:
        kinds = ["linear", "buffer"] + (["tree", "wrapped"] if depth < 2 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "linear":
            dtype = draw(st.sampled_from(FLOATS))
            layer = nn.Linear(3, 3, dtype=dtype)
            with torch.no_grad():
                layer.weight.copy_(random_tensor((3, 3), dtype, generator))
            if draw(st.booleans()):  # a non-contiguous parameter
                layer.weight = nn.Parameter(random_tensor((3, 3), dtype, generator).t())
            module.add_module(name, layer)
            linears.append(layer)
        elif kind == "buffer":
            dtype = draw(st.sampled_from(DTYPES))
            persistent = draw(st.booleans())
            module.register_buffer(
                name, random_tensor((2,), dtype, generator), persistent=persistent
            )
        elif kind == "tree":
            module.add_module(name, draw(trees(depth + 1)))
        else:
            module.add_module(name, nn.DataParallel(draw(trees(depth + 1))))
    same = (
        [layer for layer in linears if layer.weight.dtype == linears[0].weight.dtype]
        if linears
        else []
    )
    if len(same) >= 2 and draw(st.booleans()):  # tie two parameters
        same[1].weight = same[0].weight
    return module


def round_trip(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def shared_groups(state_dict: dict[str, Any]) -> set[frozenset[str]]:
    by_storage: dict[tuple[int, int], set[str]] = {}
    for key, tensor in state_dict.items():
        place = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        by_storage.setdefault(place, set()).add(key)
    return {frozenset(keys) for keys in by_storage.values() if len(keys) > 1}


def perturbed_copy(model: nn.Module) -> nn.Module:
    """The same tree with every persistent tensor changed, to load into."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in other.state_dict().values():
            if tensor.dtype is torch.bool:
                tensor.logical_not_()
            else:
                tensor.add_(1)
    return other


@given(trees())
def test_round_trip_preserves_every_tensor_bitwise_and_the_sharing(model: nn.Module) -> None:
    saved = model.state_dict()
    loaded = round_trip(saved)
    assert list(loaded) == list(saved)
    for key, tensor in saved.items():
        assert tensor_digest(loaded[key]) == tensor_digest(tensor), key
        assert loaded[key].dtype == tensor.dtype
    assert shared_groups(loaded) == shared_groups(saved)
    target = perturbed_copy(model)
    target.load_state_dict(loaded)  # strict
    assert fingerprint(target) == fingerprint(model)


@given(trees())
def test_adding_then_stripping_a_wrapper_prefix_is_the_identity(model: nn.Module) -> None:
    keys = list(model.state_dict())
    wrapped = {f"module.{key}": key for key in keys}
    consume_prefix_in_state_dict_if_present(wrapped, "module.")
    assert list(wrapped) == keys


@given(trees())
def test_replace_recipe_fails_exactly_where_a_name_contains_module_dot(model: nn.Module) -> None:
    keys = list(model.state_dict())
    corrupted = [f"module.{key}".replace("module.", "") for key in keys] != keys
    top_level, nested = key_traits(keys)  # what the oracle reasons with
    assert corrupted == (top_level or nested) == any("module." in key for key in keys)


Wrapper = Callable[[nn.Module], nn.Module]


@pytest.mark.parametrize(
    "wrapping",
    [lambda m: nn.DataParallel(m), lambda m: nn.DataParallel(nn.DataParallel(m))],
    ids=["dp", "dp-dp"],
)
@given(model=trees())
def test_harness_normaliser_names_the_unwrapped_model_on_every_tree(
    wrapping: Wrapper, model: nn.Module
) -> None:
    wrapped = wrapping(model)
    assert unwrap(wrapped) is model
    assert fingerprint(wrapped) == fingerprint(model)
    names = set(fingerprint(model))
    # every name of every tensor: a module or tensor reached twice (tied) under each of them
    every = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    assert names == {name for name, _ in every}
    assert set(model.state_dict()) <= names


def test_a_model_whose_own_attribute_is_module_keeps_it() -> None:
    model = nn.Module()
    model.add_module("module", nn.Linear(2, 2))
    assert unwrap(model) is model
    assert set(fingerprint(nn.DataParallel(model))) == {"module.weight", "module.bias"}
