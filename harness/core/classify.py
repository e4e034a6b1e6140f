"""The one place that maps an exception raised by a load to a named error class.

It runs inside worker processes but imports nothing from torch: it recognises exceptions by type
and by the message texts PyTorch uses (``torch/serialization.py``, ``Module.load_state_dict``).
"""

from __future__ import annotations

import pickle
import re

from harness.core.outcomes import ErrorClass


class ChecksumMismatchError(Exception):
    """The artifact on disk is not the file its saver recorded."""


class OptimizerStateDeviceError(Exception):
    """After loading, an optimizer state tensor is not on the device of its parameter."""


class IncompleteCheckpointError(Exception):
    """The checkpoint a load was pointed at was never finished (no DCP ``.metadata``)."""


class MetaTemplateError(Exception):
    """dcp.load could not place the tensors of a template on the meta device."""


class MeshForwardError(Exception):
    """The loaded model's forward pass failed on its device mesh (the layers' tensor-parallel
    split does not fit the model)."""


# (exception type, or the name of one this module cannot import without torch; message; class)
_RULES: tuple[tuple[type[BaseException] | str, re.Pattern[str], ErrorClass], ...] = (
    (pickle.UnpicklingError, re.compile(r"Weights only load failed"), ErrorClass.UNSAFE_GLOBAL),
    (
        RuntimeError,
        re.compile(r"Error\(s\) in loading state_dict.*(Missing key|Unexpected key)", re.S),
        ErrorClass.KEY_MISMATCH,
    ),
    (
        RuntimeError,
        re.compile(r"Attempting to deserialize object on a CUDA device but .*is_available\(\)"),
        ErrorClass.CUDA_UNAVAILABLE,
    ),
    (
        RuntimeError,
        re.compile(r"Attempting to deserialize object on CUDA device \d+ but .*device_count\(\)"),
        ErrorClass.DEVICE_INDEX_OUT_OF_RANGE,
    ),
    # torch.distributed.checkpoint's CheckpointException (a BaseException): a key the model asks
    # for is not in the checkpoint. A rank that learns of another's failure names it the same way.
    (
        "CheckpointException",
        re.compile(r"Missing key in checkpoint state_dict"),
        ErrorClass.KEY_MISMATCH,
    ),
    (
        RuntimeError,
        re.compile(
            r"^rank \d+ failed: CheckpointException: .*Missing key in checkpoint state_dict"
        ),
        ErrorClass.KEY_MISMATCH,
    ),
    (TypeError, re.compile(r"Expected state_dict to be dict-like"), ErrorClass.NOT_A_STATE_DICT),
    # safetensors.torch.save_file of tied weights
    (
        RuntimeError,
        re.compile(r"Some tensors share memory, this will lead to duplicate memory on disk"),
        ErrorClass.SHARED_TENSORS,
    ),
    # torch.save of a whole model with a parametrized layer (torch/nn/utils/parametrize.py)
    (
        RuntimeError,
        re.compile(r"Serialization of parametrized modules is only supported through state_dict"),
        ErrorClass.NOT_PICKLABLE,
    ),
    (
        RuntimeError,
        re.compile(r"got mixed torch\.Tensor and DTensor"),
        ErrorClass.SHARDED_TENSOR,
    ),
    # A whole DataParallel model keeps its saver's device_ids; its forward scatters the input to
    # each of them, and CUDA refuses an index the process cannot see. The only place a cell
    # reaches a device beyond those its storages were restored to. (Newer torch raises CUDA
    # errors as torch.AcceleratorError, a RuntimeError.)
    (RuntimeError, re.compile(r"invalid device ordinal"), ErrorClass.DP_DEVICE_MISSING),
    # DCP's Hugging Face consolidation sizes every dtype with torch.finfo, which refuses integers
    # (raised on every rank inside a CheckpointException)
    (
        "CheckpointException",
        re.compile(r"torch\.finfo\(\) requires a floating point input type"),
        ErrorClass.UNSUPPORTED_DTYPE,
    ),
    # safetensors refuses a header it cannot parse (one written with empty dtypes and shapes)
    (
        "SafetensorError",
        re.compile(r"Error while deserializing header"),
        ErrorClass.CORRUPT_FILE,
    ),
    (ChecksumMismatchError, re.compile(""), ErrorClass.CHECKSUM_MISMATCH),
    (OptimizerStateDeviceError, re.compile(""), ErrorClass.OPTIMIZER_STATE_DEVICE),
    (MeshForwardError, re.compile(""), ErrorClass.MESH_FORWARD_FAILED),
    (IncompleteCheckpointError, re.compile(""), ErrorClass.INCOMPLETE_CHECKPOINT),
    (MetaTemplateError, re.compile(""), ErrorClass.META_TEMPLATE),
)


def classify_exception(exc: BaseException) -> ErrorClass:
    """Name the error class of an exception; never raises, and never swallows interrupts."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    message = str(exc)
    for kind, pattern, error_class in _RULES:
        matches = type(exc).__name__ == kind if isinstance(kind, str) else isinstance(exc, kind)
        if matches and pattern.search(message):
            return error_class
    return ErrorClass.UNCLASSIFIED
