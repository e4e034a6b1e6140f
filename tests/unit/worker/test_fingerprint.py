from __future__ import annotations

import struct

import torch
import xxhash

from harness.core.axes import Layout
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
    assert tensor_digest(torch.tensor([], dtype=torch.bfloat16)) != tensor_digest(
        torch.tensor([], dtype=torch.float16)
    )
    assert tensor_digest(torch.zeros(0, 3)) != tensor_digest(torch.zeros(3, 0))
    assert tensor_digest(torch.tensor(1.0)) != tensor_digest(torch.tensor([1.0]))  # 0-dim
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    assert tensor_digest(one) != tensor_digest(one.view(torch.float16))  # same bytes


def test_digest_of_complex_and_conjugate_views() -> None:
    z = torch.tensor([1 + 2j, -3 + 0j], dtype=torch.complex64)
    assert tensor_digest(z.conj()) == tensor_digest(z.conj().resolve_conj())
    assert tensor_digest(z.conj()) != tensor_digest(z)
    negative = z.conj().imag  # a negative view
    assert tensor_digest(negative) == tensor_digest(torch.tensor([-2.0, -0.0]))
    assert tensor_digest(z) != tensor_digest(z.to(torch.complex128))


def test_digest_is_xxh3_128_of_dtype_shape_and_bytes() -> None:
    """The exact construction: stored digests (tests/data/corpus manifests) depend on it."""
    expected = xxhash.xxh3_128(b"torch.float32|(2,)|" + struct.pack("<2f", -0.0, 1.5))
    assert tensor_digest(torch.tensor([-0.0, 1.5])) == expected.hexdigest()
    assert len(tensor_digest(torch.tensor(True))) == 32


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
