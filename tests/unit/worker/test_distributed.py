"""The distributed worker's jobs, run in this process as a world of one rank (gloo).

The matrix runs them at 1..4 ranks in real processes; here they run in-process so that a recipe
can be broken on purpose and the report shown to notice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from harness.core.jobspec import LoadSpec, SaveSpec
from harness.launchers.protocol import free_port
from harness.worker import distributed, distributed_recipes
from harness.worker.one_process import configure_torch


@pytest.fixture(autouse=True)
def _one_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    configure_torch()
    yield
    torch.set_num_threads(threads)


def save(tmp_path: Path, variant: str, training: str = "", model: str = "trap") -> dict[str, Any]:
    spec = SaveSpec(
        cell_key="k",
        model=model,
        layout="fsdp2",
        variant=variant,
        artifact_path=str(tmp_path / variant),
        report_path=str(tmp_path / "save-report.json"),
        training=training,
    )
    return distributed.run_save(spec) | {"path": spec.artifact_path, "model": model}


def load(saved: dict[str, Any], recipe: str, training: str = "") -> dict[str, Any]:
    spec = LoadSpec(
        cell_id="c",
        model=saved["model"],
        layout="fsdp2",
        recipe=recipe,
        artifact_path=saved["path"],
        artifact_sha256=saved["sha256"],
        report_path=str(Path(saved["path"]).with_name("load-report.json")),
        training=training,
    )
    return distributed_recipes.run_load(spec)


def differing(saved: dict[str, Any], loaded: dict[str, Any]) -> list[str]:
    return sorted(n for n in saved if loaded.get(n, {}).get("digest") != saved[n]["digest"])


def test_resume_reaches_the_run_that_never_stopped(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp_train_state", "adamw_onecycle")
    report = load(saved, "dcp_resume", "adamw_onecycle")
    assert report["status"] == "loaded", report.get("message")
    assert any(name.startswith("optimizer.state.") for name in saved["tensors"])
    assert report["tensors"] == saved["tensors"]
    assert differing(saved["tensors"], report["before"])  # the fresh model was different


def test_a_resume_that_forgets_the_scheduler_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = save(tmp_path, "dcp_train_state", "sgd_steplr")
    monkeypatch.setattr(torch.optim.lr_scheduler.StepLR, "load_state_dict", lambda *_: None)
    report = load(saved, "dcp_resume", "sgd_steplr")
    assert report["status"] == "loaded"
    assert differing(saved["tensors"], report["tensors"])


def test_a_model_with_dropout_resumes_only_with_the_generators_restored(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp_train_state", "adamw_onecycle", model="dropout")
    assert load(saved, "dcp_resume", "adamw_onecycle")["tensors"] == saved["tensors"]
    without = load(saved, "dcp_resume_without_rng", "adamw_onecycle")
    assert without["status"] == "loaded", without.get("message")
    assert differing(saved["tensors"], without["tensors"])  # other dropout masks


def test_every_ranks_generators_are_saved_and_rank_r_takes_saved_rank_r_mod_n(
    tmp_path: Path,
) -> None:
    saved = save(tmp_path, "dcp_train_state", "sgd_steplr", model="dropout")
    with distributed.process_group():
        templates = distributed.saved_rng(Path(saved["path"]))
        assert set(templates) == {"rank0"}  # a world of one rank saved one
        assert templates["rank0"]["cpu"].shape == torch.get_rng_state().shape
        dcp_load({"rng": {"ranks": templates}}, checkpoint_id=saved["path"])
        torch.manual_seed(5)
        assert distributed.restore_rng(templates) == "rank0"
        assert torch.equal(torch.get_rng_state(), templates["rank0"]["cpu"])
    with pytest.raises(RuntimeError, match="holds no generator states"):
        distributed.restore_rng({})


def test_rank_indexed_state_is_saved_and_loaded_per_rank(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp_rank_state")
    key = distributed.RANK_KEY.format(0)
    assert key in saved["tensors"]
    report = load(saved, "dcp_rank_state")
    assert report["status"] == "loaded", report.get("message")
    assert report["tensors"] == saved["tensors"]


def test_partial_load_keeps_the_new_buffer_and_reports_only_saved_keys(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp")
    report = load(saved, "dcp_partial_load")
    assert report["status"] == "loaded", report.get("message")
    assert report["tensors"] == saved["tensors"]
    assert distributed_recipes.ADDED_BUFFER in report["before"]


def test_the_default_planner_refuses_the_new_buffer(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp")
    report = load(saved, "dcp_extra_key")
    assert report["status"] == "raised"
    assert report["error_class"] == "key_mismatch"
    key = f"model.{distributed_recipes.ADDED_BUFFER}"
    assert report["message"].startswith(
        f"rank 0: RuntimeError: Missing key in checkpoint state_dict: {key}."
    )


def test_a_lost_parameter_is_dropped_without_a_word(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp")
    report = load(saved, "dcp_missing_key")
    assert report["status"] == "loaded"
    missing = sorted(saved["tensors"].keys() - report["tensors"].keys())
    assert missing[0] == "head.bias"
    assert all("head.bias" in name for name in missing)


def test_a_model_without_a_biased_linear_loses_its_last_untied_parameter(
    tmp_path: Path,
) -> None:
    saved = save(tmp_path, "dcp", model="tied")  # out.weight is tied to embed.weight
    report = load(saved, "dcp_missing_key")
    assert report["status"] == "loaded", report.get("message")
    missing = sorted(saved["tensors"].keys() - report["tensors"].keys())
    assert missing[0] == "hidden.bias"
    assert all("hidden.bias" in name for name in missing)


def test_a_torch_save_file_converted_to_dcp(tmp_path: Path) -> None:
    from harness.worker.one_process import run_save

    spec = SaveSpec(
        cell_key="k",
        model="trap",
        layout="single",
        variant="state_dict",
        artifact_path=str(tmp_path / "plain.pt"),
        report_path=str(tmp_path / "save-report.json"),
    )
    saved = run_save(spec) | {"path": spec.artifact_path, "model": "trap"}
    report = load(saved, "torch_save_to_dcp")
    assert report["status"] == "loaded", report.get("message")
    assert report["tensors"] == saved["tensors"]


def test_a_changed_artifact_is_refused_before_dcp_reads_it(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp")
    metadata = Path(saved["path"]) / ".metadata"
    metadata.write_bytes(metadata.read_bytes() + b"\0")
    report = load(saved, "dcp_reshard")
    assert report["status"] == "raised"
    assert report["error_class"] == "checksum_mismatch"


def test_the_full_state_into_fsdp2_is_broadcast_from_rank_0(tmp_path: Path) -> None:
    saved = save(tmp_path, "full_state_dict")
    report = load(saved, "full_state_dict")
    assert report["status"] == "loaded", report.get("message")
    model_only = {n: t for n, t in saved["tensors"].items() if not n.startswith("optimizer.")}
    assert report["tensors"] == model_only


# Two real ranks (gloo): a failure on one rank reaches the other at once, and each raises.
TWO_RANKS = """
import traceback
from torch.distributed.checkpoint.api import CheckpointException
from harness.worker import distributed as d
from harness.worker import distributed_recipes as dr

def fail():
    disk_full = (OSError("disk full"), traceback.StackSummary())
    raise CheckpointException("CheckpointException", {0: disk_full})

def first_line(what, exc):
    print(f"{what} rank {d.rank()}: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)

with d.process_group():
    try:
        dr.on_rank0(fail)
    except BaseException as exc:
        first_line("on_rank0", exc)
    try:
        dr.agree(ValueError("only rank 1") if d.rank() == 1 else None)
    except BaseException as exc:
        first_line("agree", exc)
"""


def test_a_failure_on_one_rank_is_raised_on_every_rank(tmp_path: Path) -> None:
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_RANKS],
            env={
                **os.environ,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "CUDA_VISIBLE_DEVICES": "",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    zero, one = ([line for line in out.splitlines() if " rank " in line] for out in outputs)
    assert zero == [
        "on_rank0 rank 0: CheckpointException: CheckpointException ranks:dict_keys([0])",
        "agree rank 0: RuntimeError: rank 1 failed: ValueError: only rank 1",
    ]
    assert one == [
        "on_rank0 rank 1: RuntimeError: rank 0 failed: CheckpointException: rank 0: OSError: "
        "disk full",
        "agree rank 1: ValueError: only rank 1",
    ]


def test_an_async_save_is_checked_byte_for_byte_against_a_synchronous_one(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp_async")
    assert saved["status"] == "saved"
    folder = Path(saved["path"])
    assert (folder / ".metadata").is_file()
    assert not folder.with_name(folder.name + ".sync").exists()  # the comparison's copy is gone
    assert not folder.with_name(folder.name + ".partial").exists()
    report = load(saved, "dcp_async_reshard")
    assert report["status"] == "loaded", report.get("message")
    assert report["tensors"] == saved["tensors"]


@pytest.mark.parametrize("early", [False, True])
def test_an_interrupted_async_save_leaves_what_its_marker_says(tmp_path: Path, early: bool) -> None:
    """The copy taken while step 2's save waits before its metadata: step 1 whole, step 2's
    shards without metadata, and the marker where the recipe wrote it."""
    variant = "dcp_async_early_marker" if early else "dcp_async_interrupted"
    saved = save(tmp_path, variant)
    assert saved["status"] == "saved"
    run = Path(saved["path"])
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step-1", "step-2"]
    assert (run / "step-1" / ".metadata").is_file()
    assert list((run / "step-2").glob("*.distcp"))  # the shards were written
    assert not (run / "step-2" / ".metadata").exists()  # the metadata was not
    assert (run / "latest").read_text() == ("step-2\n" if early else "step-1\n")
    assert not run.with_name(run.name + ".live").exists()  # the save completed, and was removed
    report = load(saved, variant)
    if early:
        assert report["status"] == "raised"
        assert report["error_class"] == "incomplete_checkpoint"
        assert "latest names step-2, whose save never finished" in report["message"]
    else:
        assert report["status"] == "loaded", report.get("message")
        assert report["tensors"] == saved["tensors"]
        # the same folder, loaded before the future completes: step 2 as it stands
        in_flight = load(saved, "dcp_async_load_in_flight")
        assert in_flight["error_class"] == "incomplete_checkpoint"
        assert (
            "a load of step-2 issued before its save's future completed" in (in_flight["message"])
        )


def test_every_ranks_state_is_saved_under_its_name_and_read_back(tmp_path: Path) -> None:
    saved = save(tmp_path, "dcp_rank_state_all")
    assert saved["status"] == "saved"
    assert "dataloader.ranks.rank0" in saved["tensors"]
    templates = distributed.saved_entries(Path(saved["path"]), distributed.ALL_RANKS_KEY)
    assert list(templates) == ["dataloader.ranks.rank0"]
    report = load(saved, "dcp_rank_state_all")
    assert report["status"] == "loaded", report.get("message")
    assert report["tensors"] == saved["tensors"]


def test_two_dcp_folders_that_differ_say_how(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    def write(name: str, state: dict[str, torch.Tensor]) -> None:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.filterwarnings("ignore", message=".*save in a single process")
            dcp_save(state, checkpoint_id=str(tmp_path / name), no_dist=True)

    state = {"w": torch.arange(6.0), "b": torch.ones(2)}
    for name in ("a", "b", "c"):
        write(name, state)
    assert distributed.differences(tmp_path / "a", tmp_path / "b") == []  # ids and paths aside
    [shard] = [p.name for p in (tmp_path / "b").iterdir() if p.suffix == ".distcp"]
    data = bytearray((tmp_path / "b" / shard).read_bytes())
    data[-1] ^= 1
    (tmp_path / "b" / shard).write_bytes(bytes(data))
    assert distributed.differences(tmp_path / "a", tmp_path / "b") == [f"{shard}: other bytes"]
    (tmp_path / "c" / "extra.distcp").write_bytes(b"")
    assert distributed.differences(tmp_path / "a", tmp_path / "c") == [
        "extra.distcp: in one folder only"
    ]
    write("d", {"w": torch.arange(7.0), "b": torch.ones(2)})
    found = distributed.differences(tmp_path / "a", tmp_path / "d")
    assert ".metadata: other state_dict_metadata" in found
