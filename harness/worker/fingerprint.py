"""Digests of a model's real tensors: ``named_parameters`` and ``named_buffers`` of the unwrapped
model, never ``state_dict()``, which a bad recipe can replace."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import torch
import xxhash
from torch import nn

from harness.core.zoo import ModelError
from harness.worker.models import (
    call,
    example_input,
    has_example_input,
    leaves,
    model_device,
    unwrap,
)


def raw_bytes(flat: torch.Tensor) -> ctypes.Array[ctypes.c_char]:
    """The bytes of a contiguous CPU tensor, in place (no copy); ``flat`` must outlive them."""
    return (ctypes.c_char * flat.nbytes).from_address(flat.data_ptr())


def tensor_digest(tensor: torch.Tensor) -> str:
    """xxh3-128 over dtype, shape and the exact bytes; bitwise, so -0.0 != 0.0 and NaNs compare.
    The bytes are hashed in place; docs/performance.md gives the figures behind the choice."""
    flat = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    flat = flat.view(torch.uint8)
    digest = xxhash.xxh3_128(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(raw_bytes(flat))
    return digest.hexdigest()


def tensor_record(tensor: torch.Tensor, device: str | None = None) -> dict[str, Any]:
    """What a report says of one tensor: digest, dtype, shape and device (its own, unless the
    caller names the device its model lives on: a gathered copy of a shard)."""
    return {
        "digest": tensor_digest(tensor),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "device": device or str(tensor.device),
    }


def fingerprint(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every parameter and buffer by its name in the unwrapped model, each name of a tied
    (shared) tensor included, as state_dict() and get_model_state_dict() list them; a buffer that
    state_dict() leaves out (non-persistent) is marked ``persistent: False``."""
    inner = unwrap(model)
    tensors = [
        *inner.named_parameters(remove_duplicate=False),
        *inner.named_buffers(remove_duplicate=False),
    ]
    records = {name: tensor_record(tensor) for name, tensor in tensors}
    for name in non_persistent_buffers(inner):  # in a whole pickle only, never in a state_dict
        records[name]["persistent"] = False
    return records


def non_persistent_buffers(model: nn.Module) -> set[str]:
    """The full names of the buffers registered with ``persistent=False``."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules(remove_duplicate=False)
        for name in module._non_persistent_buffers_set
    }


def output_digest(model: nn.Module, name: str) -> tuple[str | None, str]:
    """The digest of an eval-mode forward pass on the model's fixed input, and the device it
    ran on (outputs of different device types are not expected to agree bitwise); no digest for
    a user's model that gives no example input."""
    model.eval()
    device = model_device(model)
    if not has_example_input(name):
        return None, str(device)
    with torch.no_grad():
        output = call(model, example_input(name, device))
    return forward_digest(output, name)


def forward_digest(output: Any, name: str) -> tuple[str, str]:
    """One digest over every tensor of a forward output, whatever its shape (a tensor, a tuple,
    a dict, a dataclass, a ``ModelOutput``): each leaf's path and bitwise digest, in order; and
    the devices the leaves are on."""
    digest = xxhash.xxh3_128()
    devices: set[str] = set()
    for path, tensor in leaves(output):
        digest.update(f"{path}|{tensor_digest(tensor)}\n".encode())
        devices.add(str(tensor.device))
    if not devices:
        raise ModelError(
            f"model {name}: its forward returned no tensor ({type(output).__name__}); the "
            "loaded model's output cannot be compared"
        )
    return digest.hexdigest(), ",".join(sorted(devices))


def nested_tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested state (dicts, lists, tuples: a training state), by its path
    (``optimizer.state.0.exp_avg``)."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
        return
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        items = [(str(key), item) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(str(index), item) for index, item in enumerate(value)]
    for key, item in items:
        yield from nested_tensors(item, f"{prefix}.{key}" if prefix else key)


def nested_digests(value: Any, prefix: str = "") -> dict[str, str]:
    """The digest of every tensor in a nested state, by its path."""
    return {path: tensor_digest(tensor) for path, tensor in nested_tensors(value, prefix)}
