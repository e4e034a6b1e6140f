"""Golden files: which files a path names, how a record and a verification are judged (pure, on
recorded worker reports), and the commands end to end in real workers."""

from __future__ import annotations

import json
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
