"""Resume equivalence in this process, with negative controls that prove the check is sensitive:
a resume that forgets the optimizer state, the scheduler state or the data order must differ."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from harness.core.axes import Layout
from harness.core.classify import OptimizerStateDeviceError
from harness.core.jobspec import RESUME_AT, RESUME_MORE
from harness.worker.fingerprint import fingerprint
from harness.worker.models import build, wrap
from harness.worker.training import (
    DATA_SEED,
    check_optimizer_devices,
    checkpoint,
    make_regime,
    resume,
    train_steps,
)


def uninterrupted_and_state(training: str, layout: Layout) -> tuple[dict[str, Any], dict[str, Any]]:
    model = wrap(build("trap", seed=0), layout)
    regime = make_regime(training, model)
    data = torch.Generator().manual_seed(DATA_SEED)
    train_steps(model, regime, data, "trap", RESUME_AT)
    buffer = io.BytesIO()
    torch.save(checkpoint(model, regime, data, namespace_args=False), buffer)
    train_steps(model, regime, data, "trap", RESUME_MORE)
    buffer.seek(0)
    return fingerprint(model), torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("training", ["sgd_steplr", "adam_onecycle", "sgd_onecycle", "adam_steplr"])
@pytest.mark.parametrize(("save", "load"), [(Layout.SINGLE, Layout.DP), (Layout.DP, Layout.SINGLE)])
def test_resume_across_layouts_is_bitwise_equal(training: str, save: Layout, load: Layout) -> None:
    reference, state = uninterrupted_and_state(training, save)
    model = wrap(build("trap", seed=1), load)
    resume(model, state, training, "trap")
    assert fingerprint(model) == reference


@pytest.mark.parametrize(
    ("forget", "training"),
    [
        ("optimizer", "sgd_steplr"),
        ("optimizer", "adam_onecycle"),
        ("lr_scheduler", "sgd_steplr"),
        ("lr_scheduler", "adam_onecycle"),
        ("data", "sgd_steplr"),
    ],
)
def test_a_resume_that_forgets_part_of_the_state_differs(forget: str, training: str) -> None:
    reference, state = uninterrupted_and_state(training, Layout.SINGLE)
    fresh_model = build("trap", seed=1)
    fresh = checkpoint(
        fresh_model, make_regime(training, fresh_model), torch.Generator(), namespace_args=False
    )
    if forget == "data":
        state["rng"]["data"] = torch.Generator().manual_seed(DATA_SEED).get_state()
    else:
        state[forget] = fresh[forget]  # the state a fresh optimizer/scheduler starts from
    model = build("trap", seed=1)
    resume(model, state, training, "trap")
    assert fingerprint(model) != reference


def test_optimizer_state_on_another_device_is_caught() -> None:
    parameter = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)
    optimizer.state[parameter]["momentum_buffer"] = torch.ones(2, device="meta")
    with pytest.raises(OptimizerStateDeviceError, match="'momentum_buffer' is on meta"):
        check_optimizer_devices(optimizer)
    optimizer.state[parameter]["momentum_buffer"] = torch.ones(2)
    check_optimizer_devices(optimizer)
