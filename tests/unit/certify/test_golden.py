"""Golden files: which files a path names, how a record and a verification are judged (pure, on
recorded worker reports), and the commands end to end in real workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.certify.golden import (
    GoldenError,
    golden_cell,
    golden_files,
    judge_record,
    judge_verify,
    map_choice,
    recorded_choice,
    tensor_problems,
    verify_out,
)
from harness.cli import main
from harness.core.jobs import JobRun
from harness.core.outcomes import Outcome
from harness.core.results import read_results
from tests.unit.core.test_results import ENV, result, write
from tests.unit.inspect import checkpoints
from tests.unit.inspect.pretrained import INDEX, save_gpt2

W = {"digest": "aa", "dtype": "float32", "shape": [2], "device": "cpu", "saved": "cpu"}
LOADED = {
    "status": "loaded",
    "sha256": "s1",
    "bytes": 100,
    "format": "torch_zip",
    "map_location": "none",
    "torch": "2.14.1",
    "tensors": {"w": W},
}


def run(report: dict[str, Any] | None, returncode: int = 0) -> JobRun:
    return JobRun(
        name="golden=f.pt",
        returncode=returncode,
        timed_out=False,
        duration_s=0.5,
        stderr_tail="the log",
        report=report,
    )


def test_a_golden_cell_is_named_by_its_file() -> None:
    cell = golden_cell("ckpts/best.pt", (0, 1))
    assert cell.id == "golden=ckpts/best.pt"
    assert cell.recipe_spec.summary.startswith("a team's own checkpoint")


def test_golden_files_expands_folders_and_keeps_dcp_whole(tmp_path: Path) -> None:
    checkpoints.zip_file(tmp_path)
    checkpoints.dcp_dir(tmp_path)
    (tmp_path / "sub").mkdir()
    checkpoints.safetensors_file(tmp_path / "sub")
    found = golden_files([tmp_path, tmp_path / "weights.pt"])
    assert found == [
        tmp_path / "checkpoint.dcp",
        tmp_path / "sub" / "weights.safetensors",
        tmp_path / "weights.pt",
    ]
    with pytest.raises(GoldenError, match=r"nowhere\.pt: no such file or folder"):
        golden_files([tmp_path / "nowhere.pt"])
    (tmp_path / "sub2").mkdir()
    with pytest.raises(GoldenError, match="no files under"):
        golden_files([tmp_path / "sub2"])


def test_record_judgements() -> None:
    outcome, reason, observed = judge_record("f.pt", Path("f.pt"), run(LOADED))
    assert outcome is Outcome.PASS
    assert "1 tensors recorded from a torch_zip file of 100 bytes, saved at cpu, loaded on cpu" in (
        reason
    )
    assert observed is not None
    assert observed["tensors"] == {"w": W}
    needs = {"status": "needs_globals", "refused": ["argparse.Namespace"]}
    outcome, reason, _ = judge_record("f.pt", Path("f.pt"), run(needs))
    assert outcome is Outcome.SKIP
    assert "--safe-global argparse.Namespace" in reason
    unreadable = {"status": "unreadable", "message": "the legacy .tar format of torch <= 0.1.x"}
    outcome, reason, _ = judge_record("f.pt", Path("f.pt"), run(unreadable))
    assert outcome is Outcome.SKIP
    assert "cannot read the legacy .tar format" in reason
    outcome, reason, _ = judge_record("f.pt", Path("f.pt"), run(None, returncode=-11))
    assert outcome is Outcome.ERROR
    assert "killed by SIGSEGV" in reason
    assert "the log" in reason


def test_verify_judgements() -> None:
    assert judge_verify("f.pt", LOADED, run(LOADED))[0] is Outcome.PASS
    flipped = {**LOADED, "tensors": {"w": {**W, "digest": "bb"}}}
    outcome, reason, _ = judge_verify("f.pt", LOADED, run(flipped))
    assert outcome is Outcome.FAIL
    assert "1 tensor(s) differ in bytes: w (w: aa recorded, bb now)" in reason
    changed = {"status": "changed", "sha256": "s2"}
    outcome, reason, _ = judge_verify("f.pt", LOADED, run(changed))
    assert outcome is Outcome.ERROR
    assert "the file changed since `golden record`" in reason
    broken = {"status": "broken", "sha256": "s2", "message": "f.pt: truncated: cut short"}
    outcome, reason, _ = judge_verify("f.pt", LOADED, run(broken))
    assert outcome is Outcome.ERROR
    assert "truncated" in reason
    assert "changed since" in reason
    raised = {
        "status": "raised",
        "sha256": "s1",
        "exception_type": "RuntimeError",
        "error_class": "unclassified",
        "message": "boom",
    }
    outcome, reason, _ = judge_verify("f.pt", LOADED, run(raised))
    assert outcome is Outcome.FAIL  # it loaded when recorded
    assert "it loaded under torch 2.14.1" in reason
    # a newer torch that refuses a global the recording's allowed is a regression, not a skip
    refused = {"status": "needs_globals", "sha256": "s1", "refused": ["argparse.Namespace"]}
    outcome, reason, _ = judge_verify("f.pt", LOADED, run(refused))
    assert outcome is Outcome.FAIL
    assert "refuses argparse.Namespace" in reason


def test_tensor_problems_compare_devices_only_under_the_same_policy() -> None:
    moved = {"w": {**W, "device": "cuda:0"}}
    assert tensor_problems({"w": W}, moved, same_policy=False) == []
    (problem,) = tensor_problems({"w": W}, moved, same_policy=True)
    assert "differ in device" in problem
    problems = tensor_problems({"w": W, "v": W}, {"w": W, "u": W}, same_policy=True)
    assert problems == [
        "1 recorded tensor(s) missing: v",
        "1 tensor(s) not in the record: u",
    ]


def test_golden_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = checkpoints.zip_file(tmp_path)
    out = tmp_path / "g.jsonl"
    assert (
        main(["golden", "record", str(path), "--safe-global", "os.system", "--out", str(out)]) == 2
    )
    assert "--safe-global os.system: that global runs code" in capsys.readouterr().err
    assert main(["golden", "record", str(tmp_path / "no.pt"), "--out", str(out)]) == 2
    assert "no.pt: no such file or folder" in capsys.readouterr().err
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"kind": "environment", "schema_version": 1}) + "\n")
    assert main(["golden", "verify", str(results), "--out", str(out)]) == 2
    assert "holds no golden cells" in capsys.readouterr().err


def test_map_location_choices_and_what_verify_takes_from_a_recording() -> None:
    for good in ("auto", "cpu", "cuda:0", "cuda:3", "as-saved"):
        assert map_choice(good) == good
    for bad in ("gpu", "cuda", "cuda:x", "none", ""):
        with pytest.raises(GoldenError, match="give auto"):
            map_choice(bad)
    assert recorded_choice({"map_choice": "as-saved", "map_location": "none"}) == "as-saved"
    # recordings made before the option: a cpu load stays cpu, the rest was the automatic one
    assert recorded_choice({"map_location": "cpu"}) == "cpu"
    assert recorded_choice({"map_location": "none"}) == "auto"


def test_verify_names_its_default_output_after_the_recording_and_never_replaces_one(
    tmp_path: Path,
) -> None:
    recording = tmp_path / "team.jsonl"
    assert verify_out(recording) == tmp_path / "team-verify.jsonl"
    (tmp_path / "team-verify.jsonl").write_text("")
    assert verify_out(recording) == tmp_path / "team-verify-2.jsonl"
    (tmp_path / "team-verify-2.jsonl").write_text("")
    assert verify_out(recording) == tmp_path / "team-verify-3.jsonl"


def test_a_bad_map_location_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = checkpoints.zip_file(tmp_path)
    out = tmp_path / "g.jsonl"
    assert main(["golden", "record", str(path), "--map-location", "gpu", "--out", str(out)]) == 2
    assert "--map-location 'gpu': give auto" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_record_then_verify_in_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every format and every bad input through `golden record` and `golden verify`, in real
    worker processes; then a file that changes, and one that breaks, after the recording."""
    files = tmp_path / "files"
    for fmt, maker in checkpoints.GOOD.items():
        maker(checkpoints.fresh(files, fmt))
    checkpoints.train_state_file(checkpoints.fresh(files, "train"))
    marker = tmp_path / "payload-ran"
    for name, (maker, _) in checkpoints.bad_inputs(marker).items():
        maker(checkpoints.fresh(files, name))
    golden = tmp_path / "golden.jsonl"
    args = ["--jobs", "2", "--timeout", "60"]
    assert main(["golden", "record", str(files), "--out", str(golden), *args]) == 1
    recorded = {r.cell.model.removeprefix(f"{files}/"): r for r in read_results(golden).results}
    outcomes = {name.split("/")[0]: r.outcome for name, r in recorded.items()}
    assert {outcomes[fmt] for fmt in checkpoints.GOOD} == {Outcome.PASS}
    assert outcomes["train"] is Outcome.SKIP
    bad = [name.replace(" ", "-") for name in checkpoints.bad_inputs(marker)]
    assert {outcomes[name] for name in bad} == {Outcome.ERROR}
    reasons = {recorded[n].reason.split(": ", 1)[1] for n in recorded if n.split("/")[0] in bad}
    assert len(reasons) == len(bad)  # a distinct error for each bad input
    # unchanged files verify bitwise; diff of the recording and the verification certifies
    verified = tmp_path / "verified.jsonl"
    assert main(["golden", "verify", str(golden), "--out", str(verified), *args]) == 1
    assert main(["diff", str(golden), str(verified)]) == 0
    # merged with a matrix run, the recording is a baseline that `golden verify` reads (what
    # `nox -s certify` does with one), and `report` draws
    matrix = write(tmp_path / "matrix.jsonl", ENV, result())
    baseline, candidate = tmp_path / "baseline.jsonl", tmp_path / "candidate.jsonl"
    assert main(["merge", str(baseline), str(matrix), str(golden)]) == 0
    part = tmp_path / "part.jsonl"
    assert main(["golden", "verify", str(baseline), "--out", str(part), *args]) == 1
    assert main(["merge", str(candidate), str(matrix), str(part)]) == 0
    assert main(["diff", str(baseline), str(candidate)]) == 0
    assert main(["report", str(candidate)]) == 0
    assert "golden=" in candidate.with_suffix(".md").read_text()
    # a file that changes after the recording, and one that breaks
    (files / "torch_zip" / "weights.pt").write_bytes(
        (files / "torch_legacy" / "legacy.pt").read_bytes()
    )
    checkpoints.flipped_byte(checkpoints.fresh(tmp_path, "broken-later"))
    broken = files / "safetensors" / "weights.safetensors"
    broken.write_bytes(broken.read_bytes()[:-3])
    again = tmp_path / "again.jsonl"
    assert main(["golden", "verify", str(golden), "--out", str(again), *args]) == 1
    after = {r.cell.model.removeprefix(f"{files}/"): r for r in read_results(again).results}
    changed = after["torch_zip/weights.pt"]
    assert changed.outcome is Outcome.ERROR
    assert "changed since `golden record`" in changed.reason
    cut = after["safetensors/weights.safetensors"]
    assert cut.outcome is Outcome.ERROR
    assert "truncated" in cut.reason
    capsys.readouterr()
    assert main(["diff", str(golden), str(again)]) == 1
    assert "regression" in capsys.readouterr().out.lower()
    assert not marker.exists()


def test_golden_files_keeps_a_sharded_safetensors_folder_whole(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        checkpoints.safetensors_file(folder).rename(folder / name)
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / INDEX).write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    (folder / "optimizer.pt").write_bytes(b"")  # not the index's: a cell of its own
    (folder / "checkpoint-500").mkdir()
    checkpoints.zip_file(folder / "checkpoint-500")
    assert golden_files([tmp_path]) == [
        folder,
        folder / "checkpoint-500" / "weights.pt",
        folder / "optimizer.pt",
    ]
    assert golden_files([folder])[0] == folder
    assert golden_files([folder / INDEX]) == [folder / INDEX]
    # two indexes in one folder: each is a checkpoint, named by its index
    (folder / "other.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    assert golden_files([folder]) == [
        folder / "checkpoint-500" / "weights.pt",
        folder / INDEX,
        folder / "optimizer.pt",
        folder / "other.safetensors.index.json",
    ]


def test_a_changed_safetensors_file_names_the_tensors_that_differ() -> None:
    before = {**LOADED, "tensors": {"w": W, "v": W}}
    changed = {**before, "status": "changed", "sha256": "s2"}
    changed["tensors"] = {"w": {**W, "digest": "bb"}, "v": W}
    outcome, reason, _ = judge_verify("f", before, run(changed))
    assert outcome is Outcome.ERROR
    assert "the file changed since `golden record`" in reason
    what = "1 tensor(s) differ in bytes: w (w: aa recorded, bb now)"
    assert reason.endswith(f"; what changed: {what}")
    outcome, reason, _ = judge_verify("f", before, run({**before, "status": "changed"}))
    assert outcome is Outcome.PASS  # the recorded digest: not changed whatever the status says
    same = {**before, "status": "changed", "sha256": "s2"}
    _, reason, _ = judge_verify("f", before, run(same))
    assert reason.endswith("every tensor loads bitwise as recorded: the change is outside them")


def test_a_dcp_record_says_how_its_chunks_split_the_tensors() -> None:
    split = {
        "rows": {**W, "saved": "sharded", "split": "4 chunks along dim 0"},
        "cols": {**W, "saved": "sharded", "split": "4 chunks along dim 1"},
        "rows_twice": {**W, "saved": "sharded", "split": "4 chunks along dim 0"},
    }
    report = {**LOADED, "format": "dcp", "tensors": split}
    outcome, reason, observed = judge_record("c", Path("c"), run(report))
    assert outcome is Outcome.PASS
    assert (
        "saved at sharded (split from the chunks: 4 chunks along dim 0 (2 tensors); "
        "4 chunks along dim 1 (1 tensor)), loaded on cpu"
    ) in reason
    assert observed is not None
    assert observed["tensors"]["cols"]["split"] == "4 chunks along dim 1"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.mark.slow
def test_a_sharded_safetensors_folder_records_and_verifies_in_workers(
    gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """save_pretrained's folder, one cell; then a tensor changed in one shard, and a shard
    deleted, each named by `golden verify`."""
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(gpt2, tmp_path / "gpt2"))
    golden = tmp_path / "golden.jsonl"
    args = ["--jobs", "1", "--timeout", "60"]
    assert main(["golden", "record", str(folder), "--out", str(golden), *args]) == 0
    (recorded,) = read_results(golden).results
    assert recorded.outcome is Outcome.PASS, recorded.reason
    assert recorded.cell.model == str(folder)
    assert "tensors recorded from a safetensors_sharded file" in recorded.reason
    assert recorded.observed is not None
    names = set(recorded.observed["tensors"])
    assert "transformer.h.1.mlp.c_proj.weight" in names
    verified = tmp_path / "verified.jsonl"
    assert main(["golden", "verify", str(golden), "--out", str(verified), *args]) == 0
    (again,) = read_results(verified).results
    assert again.outcome is Outcome.PASS, again.reason
    assert f"{len(names)} tensors bitwise equal to the record" in again.reason
    # one tensor changed in one shard
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
    name = "transformer.h.1.mlp.c_proj.weight"
    tensors = load_file(str(folder / weight_map[name]))
    tensors[name][0, 0] += 1
    save_file(tensors, str(folder / weight_map[name]), metadata={"format": "pt"})
    changed = tmp_path / "changed.jsonl"
    assert main(["golden", "verify", str(golden), "--out", str(changed), *args]) == 1
    (result,) = read_results(changed).results
    assert result.outcome is Outcome.ERROR
    assert "changed since `golden record`" in result.reason
    assert f"what changed: 1 tensor(s) differ in bytes: {name} (" in result.reason
    # a shard deleted
    (folder / weight_map[name]).unlink()
    deleted = tmp_path / "deleted.jsonl"
    assert main(["golden", "verify", str(golden), "--out", str(deleted), *args]) == 1
    (result,) = read_results(deleted).results
    assert result.outcome is Outcome.ERROR
    assert f"the file is broken: {folder / weight_map[name]}: missing_shard: " in result.reason
    assert "its sha256 differs from the record" in result.reason
    capsys.readouterr()


@pytest.mark.slow
def test_a_dcp_checkpoint_saved_split_over_meshes_records_its_full_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 gloo ranks save DTensors split over a 1-D mesh of 4 (Shard(0), Shard(1), unevenly) and
    a 2x2 mesh ([Shard(0), Shard(1)]): one process records every tensor whole, bitwise the
    tensor the ranks split, and verifies it."""
    from harness.worker.fingerprint import tensor_digest
    from tests.unit.inspect import dcp_ranks

    checkpoint = dcp_ranks.save(tmp_path / "ranks")
    golden = tmp_path / "golden.jsonl"
    args = ["--jobs", "1", "--timeout", "60"]
    assert main(["golden", "record", str(checkpoint), "--out", str(golden), *args]) == 0
    (recorded,) = read_results(golden).results
    assert recorded.outcome is Outcome.PASS, recorded.reason
    assert recorded.observed is not None
    tensors = recorded.observed["tensors"]
    full = dcp_ranks.full_tensors()
    assert {name: t["digest"] for name, t in tensors.items()} == {
        name: tensor_digest(tensor) for name, tensor in full.items()
    }
    assert {name: t["shape"] for name, t in tensors.items()} == {
        name: list(tensor.shape) for name, tensor in full.items()
    }
    assert tensors["grid"]["split"] == "2x2 (dim 0 in 2, dim 1 in 2)"
    assert tensors["cols"]["split"] == "4 chunks along dim 1"
    assert tensors["plain"]["split"] == "whole (one chunk)"
    assert "2x2 (dim 0 in 2, dim 1 in 2) (1 tensor)" in recorded.reason
    verified = tmp_path / "verified.jsonl"
    assert main(["golden", "verify", str(golden), "--out", str(verified), *args]) == 0
    (again,) = read_results(verified).results
    assert again.outcome is Outcome.PASS, again.reason
    assert f"{len(full)} tensors bitwise equal to the record" in again.reason
    capsys.readouterr()
