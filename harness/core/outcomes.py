"""The outcomes of a cell, and the named error classes the oracle predicts and workers observe."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    PASS = "PASS"  # observed what the oracle expected, and it was a clean load
    FAIL = "FAIL"  # wrong weights, wrong device, an unexpected error, or the wrong error
    XFAIL = "XFAIL"  # a known-bad recipe failed the way the oracle predicted
    XPASS = "XPASS"  # the oracle predicted a failure that did not happen (fails the run)
    ERROR = "ERROR"  # the harness could not prove the cell: crash, timeout, bad setup
    SKIP = "SKIP"  # not run, with a reason

    @property
    def fails_run(self) -> bool:
        return self in _FAILING


_FAILING = frozenset({Outcome.FAIL, Outcome.XPASS, Outcome.ERROR})


def exit_code(outcomes: list[Outcome]) -> int:
    """The run's exit code, a reduction over all outcomes: 1 when any cell fails the run."""
    return 1 if any(outcome.fails_run for outcome in outcomes) else 0


class ErrorClass(StrEnum):
    """Named ways a load can go wrong; raised by PyTorch or found by the harness's checks."""

    # Raised by PyTorch during the save.
    NOT_PICKLABLE = "not_picklable"
    SHARED_TENSORS = "shared_tensors"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    # Raised by PyTorch during the load.
    KEY_MISMATCH = "key_mismatch"
    UNSAFE_GLOBAL = "unsafe_global"
    NOT_A_STATE_DICT = "not_a_state_dict"
    CUDA_UNAVAILABLE = "cuda_unavailable"
    DEVICE_INDEX_OUT_OF_RANGE = "device_index_out_of_range"
    # Raised by PyTorch in the loaded model's forward pass.
    DP_DEVICE_MISSING = "dp_device_missing"
    SHARDED_TENSOR = "sharded_tensor"
    MESH_FORWARD_FAILED = "mesh_forward_failed"
    INCOMPLETE_CHECKPOINT = "incomplete_checkpoint"
    CORRUPT_FILE = "corrupt_file"
    META_TEMPLATE = "meta_template"
    # Raised by the harness before loading.
    CHECKSUM_MISMATCH = "checksum_mismatch"
    OPTIMIZER_STATE_DEVICE = "optimizer_state_device"
    # Found by comparing the loaded model with the saver's record (the load raised nothing).
    TENSOR_SET_DIFFERS = "tensor_set_differs"
    DTYPE_CHANGED = "dtype_changed"
    WEIGHTS_DIFFER = "weights_differ"
    DEVICE_MISMATCH = "device_mismatch"
    OUTPUT_DIFFERS = "output_differs"
    ISOLATION_MISMATCH = "isolation_mismatch"
    # Anything else.
    UNCLASSIFIED = "unclassified"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ErrorClass.NOT_PICKLABLE: "torch.save could not pickle the object (a parametrized module)",
    ErrorClass.SHARED_TENSORS: "safetensors' save_file refused tensors that share memory (ties)",
    ErrorClass.UNSUPPORTED_DTYPE: (
        "the writer refused a tensor for its dtype (DCP's Hugging Face consolidation and an "
        "integer tensor)"
    ),
    ErrorClass.KEY_MISMATCH: "state_dict keys do not match the model (missing/unexpected keys)",
    ErrorClass.UNSAFE_GLOBAL: "torch.load(weights_only=True) refused a pickled global",
    ErrorClass.NOT_A_STATE_DICT: "load_state_dict was given something that is not a mapping",
    ErrorClass.CUDA_UNAVAILABLE: "a CUDA-tagged storage was loaded where CUDA is not available",
    ErrorClass.DEVICE_INDEX_OUT_OF_RANGE: "a storage's saved cuda:i is not visible when loading",
    ErrorClass.DP_DEVICE_MISSING: (
        "a loaded whole DataParallel model's forward needs a GPU of its saved device_ids that the "
        "loader does not see"
    ),
    ErrorClass.SHARDED_TENSOR: (
        "a DTensor shard (an FSDP2 model's own state_dict) was copied into a plain tensor"
    ),
    ErrorClass.MESH_FORWARD_FAILED: (
        "the loaded model's forward pass failed on its device mesh: its tensor-parallel split "
        "does not fit the model (another plan, or a degree that does not divide its layers)"
    ),
    ErrorClass.INCOMPLETE_CHECKPOINT: (
        "the checkpoint a load was pointed at was never finished: its save was in flight (no "
        "DCP .metadata)"
    ),
    ErrorClass.CORRUPT_FILE: (
        "a file the load reads is not what its format says (a safetensors header that does not "
        "parse): the save wrote it wrong"
    ),
    ErrorClass.META_TEMPLATE: (
        "dcp.load was handed a template on the meta device (a model not yet materialized) and "
        "could not place its tensors"
    ),
    ErrorClass.CHECKSUM_MISMATCH: "the file's sha256 differs from the one its saver recorded",
    ErrorClass.OPTIMIZER_STATE_DEVICE: "an optimizer state tensor is not on its parameter's device",
    ErrorClass.TENSOR_SET_DIFFERS: "the loaded model has missing or extra tensors",
    ErrorClass.DTYPE_CHANGED: (
        "the load raised nothing but a tensor came back in another dtype than it was saved in"
    ),
    ErrorClass.WEIGHTS_DIFFER: "the load raised nothing but tensors differ from what was saved",
    ErrorClass.DEVICE_MISMATCH: "a loaded tensor is not on the expected device",
    ErrorClass.OUTPUT_DIFFERS: "the loaded model's forward output differs from the saver's",
    ErrorClass.ISOLATION_MISMATCH: "the worker did not see exactly the devices it was given",
    ErrorClass.UNCLASSIFIED: "an exception no rule recognises",
}
