from __future__ import annotations

import torch

from harness.axes import Layout
from harness.worker.fingerprint import fingerprint, output_digest, tensor_digest
from harness.worker.models import build, wrap


def test_digest_is_bitwise() -> None:
    assert tensor_digest(torch.tensor([0.0])) != tensor_digest(torch.tensor([-0.0]))
    nan = torch.tensor([float("nan")])
    assert tensor_digest(nan) == tensor_digest(nan.clone())
    assert tensor_digest(torch.tensor([1.0])) != tensor_digest(
        torch.tensor([1.0], dtype=torch.float64)
    )
    assert tensor_digest(torch.zeros(2, 3)) != tensor_digest(torch.zeros(3, 2))


def test_digest_of_views_and_odd_dtypes() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    assert tensor_digest(base.t()) == tensor_digest(base.t().contiguous())
    assert tensor_digest(base[1:, 2:]) == tensor_digest(base[1:, 2:].clone())
    assert tensor_digest(torch.tensor(True)) != tensor_digest(torch.tensor(False))
    assert tensor_digest(torch.tensor([], dtype=torch.bfloat16))


def test_fingerprint_names_the_unwrapped_model_and_includes_buffers() -> None:
    plain = fingerprint(build("trap", seed=0))
    wrapped = fingerprint(wrap(build("trap", seed=0), Layout.DP))
    assert plain == wrapped
    assert plain["encoder.bn.num_batches_tracked"]["dtype"] == "int64"
    assert plain["encoder.bn.running_mean"]["device"] == "cpu"


def test_fingerprint_walks_real_tensors_not_state_dict() -> None:
    model = build("trap", seed=0)
    other = build("trap", seed=1)
    before = fingerprint(model)
    model.state_dict = other.state_dict  # type: ignore[method-assign]
    assert fingerprint(model) == before


def test_output_digest_is_reproducible() -> None:
    assert output_digest(build("trap", seed=0), "trap") == output_digest(
        build("trap", seed=0), "trap"
    )
    assert output_digest(build("trap", seed=0), "trap") != output_digest(
        build("trap", seed=1), "trap"
    )
