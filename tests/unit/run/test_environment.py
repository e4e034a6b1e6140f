from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import harness
from harness.launchers.zygote import ZygoteLauncher
from harness.run.environment import TorchUnavailableError, describe, git_commit, torch_environment
from harness.run.inventory import simulated
from harness.run.jobs import worker_env
from tests.unit.fake_launcher import RecordingLauncher, crash


@pytest.mark.slow
def test_torch_side_is_read_in_a_worker_with_no_gpu_visible() -> None:
    torch_side = torch_environment()
    assert torch_side["torch"][0].isdigit()
    assert torch_side["device_count"] == 0  # the probe runs with CUDA_VISIBLE_DEVICES=""
    environment = describe(torch_side, simulated(0), visibility_policy="minimal")
    assert environment["torch"] == torch_side["torch"]
    assert environment["python"]


def test_an_interpreter_that_cannot_run_the_worker_is_a_clear_error() -> None:
    # /bin/false stands in for an interpreter without torch: it exits 1 and says nothing.
    with pytest.raises(
        TorchUnavailableError, match=r"/bin/false -m harness.worker --environment failed \(exit 1\)"
    ):
        torch_environment(python="/bin/false")


FAKE_PYTHON = """#!/bin/sh
echo "{\\"torch\\": \\"0.0\\", \\"seen\\": \\"$CUDA_VISIBLE_DEVICES\\"}"
"""


def test_the_torch_side_sees_every_gpu_of_the_run(tmp_path: Path) -> None:
    # A stand-in interpreter that reports the CUDA_VISIBLE_DEVICES it was started with: the
    # environment's cuda_available/device_count must describe the GPUs the cells will use.
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    two = simulated(2)
    assert torch_environment(two, python=str(fake))["seen"] == ",".join(two.uuids.values())
    assert torch_environment(python=str(fake))["seen"] == ""


def test_the_harness_commit_is_read_from_git_or_named() -> None:
    head = subprocess.run(
        ["git", "-C", str(Path(harness.__file__).parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert git_commit({}) == (head.stdout.strip() if head.returncode == 0 else None)
    assert git_commit({"CKPT_MATRIX_GIT_COMMIT": "abc123"}) == "abc123"


def test_the_environment_records_the_shard_or_null() -> None:
    record = {
        "index": 2,
        "count": 4,
        "source": "--shard",
        "matrix": "ab12cd34ef56ab12",
        "matrix_cells": 180,
    }
    torch_side = {"torch": "2.14.1"}
    sharded = describe(torch_side, simulated(0), visibility_policy="minimal", shard=record)
    assert sharded["shard"] == record
    assert sharded["torch"] == "2.14.1"  # every other field is kept
    unsharded = describe(torch_side, simulated(0), visibility_policy="minimal")
    assert unsharded["shard"] is None
    assert sharded.keys() == unsharded.keys()


@pytest.mark.slow
def test_the_torch_side_is_read_by_one_of_the_runs_own_workers(tmp_path: Path) -> None:
    zygote = ZygoteLauncher(
        env=worker_env(()), log_path=tmp_path / "zygote.log", preload_torchvision=False
    )
    try:
        forked = torch_environment(launcher=zygote, workdir=tmp_path)
    finally:
        zygote.stop_all()
    assert forked == torch_environment()  # the same answer as a fresh interpreter's


def test_a_worker_that_cannot_report_the_torch_side_is_a_clear_error(tmp_path: Path) -> None:
    broken = RecordingLauncher(behaviours={"the torch side of the environment": crash})
    with pytest.raises(TorchUnavailableError, match="killed by SIGSEGV"):
        torch_environment(launcher=broken, workdir=tmp_path)
    [job] = broken.jobs
    assert job.argv[-2:] == ("--environment", str(tmp_path / "environment" / "torch.json"))
