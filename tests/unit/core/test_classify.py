from __future__ import annotations

import json
import pickle
import traceback
from pathlib import Path

import pytest

from harness.core.classify import (
    ChecksumMismatchError,
    IncompleteCheckpointError,
    MeshForwardError,
    MetaTemplateError,
    classify_exception,
)
from harness.core.outcomes import ErrorClass

RECORDED = json.loads(
    (Path(__file__).parents[2] / "data" / "torch_2.14.1_load_errors.json").read_text()
)
TYPES: dict[str, type[Exception]] = {
    "UnpicklingError": pickle.UnpicklingError,
    "RuntimeError": RuntimeError,
    "TypeError": TypeError,
}


@pytest.mark.parametrize(
    "name",
    [
        "unsafe_global",
        "key_mismatch",
        "not_a_state_dict",
        "cuda_unavailable",
        "device_index_out_of_range",
        "sharded_tensor",
    ],
)
def test_recorded_torch_messages_classify_to_their_class(name: str) -> None:
    recorded = RECORDED[name]
    exc = TYPES[recorded["type"]](recorded["message"])
    assert classify_exception(exc) is ErrorClass(name)


def test_same_message_with_another_type_is_unclassified() -> None:
    message = RECORDED["key_mismatch"]["message"]
    assert classify_exception(ValueError(message)) is ErrorClass.UNCLASSIFIED


def test_checksum_and_unknown() -> None:
    assert classify_exception(ChecksumMismatchError("x")) is ErrorClass.CHECKSUM_MISMATCH
    assert classify_exception(OSError("disk")) is ErrorClass.UNCLASSIFIED


def test_interrupts_are_never_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        classify_exception(KeyboardInterrupt())


def test_a_dataparallel_forward_on_a_missing_gpu() -> None:
    # Composed, not recorded: no machine with two GPUs has run this yet. CUDA's own text for an
    # index the process cannot see; torch raises it as a RuntimeError (AcceleratorError).
    exc = RuntimeError("CUDA error: invalid device ordinal\nCUDA kernel errors might be ...")
    assert classify_exception(exc) is ErrorClass.DP_DEVICE_MISSING


def test_a_checkpoint_exception_for_a_missing_key_is_a_key_mismatch() -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    no_trace = traceback.StackSummary()
    missing = RuntimeError("Missing key in checkpoint state_dict: dataloader.dp_rank_2.")
    exc = CheckpointException("CheckpointException", {2: (missing, no_trace)})
    assert not isinstance(exc, Exception)  # a BaseException: a bare `except Exception` misses it
    assert classify_exception(exc) is ErrorClass.KEY_MISMATCH
    other = CheckpointException("CheckpointException", {0: (ValueError("disk full"), no_trace)})
    assert classify_exception(other) is ErrorClass.UNCLASSIFIED


@pytest.mark.parametrize(
    ("message", "error_class"),
    [
        (
            "\n    Some tensors share memory, this will lead to duplicate memory on disk and "
            "potential differences when loading them again: [{'a', 'b'}].",
            ErrorClass.SHARED_TENSORS,
        ),
        (
            "Serialization of parametrized modules is only supported through state_dict(). See:",
            ErrorClass.NOT_PICKLABLE,
        ),
    ],
)
def test_what_a_save_refuses_is_named(message: str, error_class: ErrorClass) -> None:
    assert classify_exception(RuntimeError(message)) is error_class


def test_a_forward_that_fails_on_a_device_mesh_is_named_so() -> None:
    failed = MeshForwardError("rank 0: the forward pass on tpx3 failed: RuntimeError: shape")
    assert classify_exception(failed) is ErrorClass.MESH_FORWARD_FAILED
    # the same words from anything else are not
    assert classify_exception(RuntimeError(str(failed))) is ErrorClass.UNCLASSIFIED


def test_a_checkpoint_whose_save_never_finished_is_named_so() -> None:
    unfinished = IncompleteCheckpointError("latest names step-2, whose save never finished")
    assert classify_exception(unfinished) is ErrorClass.INCOMPLETE_CHECKPOINT
    meta = MetaTemplateError("dcp.load(no_dist=True) of a template with 10 tensor(s) on meta")
    assert classify_exception(meta) is ErrorClass.META_TEMPLATE


def test_what_dcps_hugging_face_writer_breaks_is_named() -> None:
    # the exception types these come as, by name (the classifier imports neither package)
    CheckpointException = type("CheckpointException", (BaseException,), {})
    SafetensorError = type("SafetensorError", (Exception,), {})
    refused = CheckpointException(
        "CheckpointException ranks:dict_keys([0])\nTypeError: torch.finfo() requires a floating "
        "point input type. Use torch.iinfo to handle 'torch.finfo'"
    )
    assert classify_exception(refused) is ErrorClass.UNSUPPORTED_DTYPE
    empty = SafetensorError(
        "Error while deserializing header: invalid JSON in header: unknown variant ``"
    )
    assert classify_exception(empty) is ErrorClass.CORRUPT_FILE
    assert classify_exception(RuntimeError(str(empty))) is ErrorClass.UNCLASSIFIED
