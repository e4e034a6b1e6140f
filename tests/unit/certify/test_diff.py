"""Certification diffs on results files written by the harness's own writer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.certify.diff import compare, to_markdown
from harness.cli import main
from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.oracle import Expectation
from harness.core.outcomes import ErrorClass, Outcome
from harness.core.results import CellResult, ResultsWriter, read_results

ENV = {"torch": "2.14.1", "driver_version": "550.54", "python": "3.11.7", "gpus": "none"}


def result(recipe: str, outcome: Outcome = Outcome.PASS, **observed: Any) -> CellResult:
    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe=recipe,
    )
    error = ErrorClass.KEY_MISMATCH if outcome is Outcome.XFAIL else None
    return CellResult(
        cell=cell,
        outcome=outcome,
        expected=Expectation(error=error, reason="r", tensor_device="cpu"),
        reason=f"{outcome} because",
        observed={"devices": ["cpu"], **observed},
        error=None,
        duration_s=1.0,
    )


BASE = [
    result("strip_prefix"),
    result("slice_prefix"),
    result("unfixed_prefix", Outcome.XFAIL, error_class="key_mismatch", message="Missing key(s)"),
]


def write(path: Path, results: list[CellResult], environment: dict[str, Any] = ENV) -> Path:
    with ResultsWriter(path, environment, resume=False) as writer:
        for r in results:
            writer.append(r)
    return path


def test_identical_runs_certify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = write(tmp_path / "a.jsonl", BASE), write(tmp_path / "b.jsonl", BASE)
    assert main(["diff", str(a), str(b), "--markdown", str(tmp_path / "d.md")]) == 0
    out = capsys.readouterr().out
    assert "CERTIFIED" in out
    assert "3 cells compared" in out
    assert "No cell changed." in out
    assert (tmp_path / "d.md").read_text() == out


def test_a_pass_turned_fail_by_hand_is_a_regression_naming_the_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.jsonl", BASE)
    lines = a.read_text().splitlines()
    edited = json.loads(lines[1])
    assert edited["outcome"] == "PASS"
    edited["outcome"] = "FAIL"
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "NOT CERTIFIED" in out
    assert "### Regressions (1)" in out
    assert f"`{edited['id']}` | PASS | FAIL" in out


def test_environment_changes_are_named(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", BASE)
    changed = {**ENV, "driver_version": "580.159", "torch": "2.13.0", "launcher": "zygote"}
    b = write(tmp_path / "b.jsonl", BASE, changed)
    diff = compare(read_results(a), read_results(b))
    assert ("driver_version", "550.54", "580.159") in diff.environment
    assert ("launcher", None, "zygote") in diff.environment
    assert ("torch", "2.14.1", "2.13.0") in diff.environment
    assert diff.certified()
    assert "| driver_version | 550.54 | 580.159 |" in to_markdown(diff)


def test_fixes_error_classes_messages_and_devices(tmp_path: Path) -> None:
    before = [result("strip_prefix", Outcome.FAIL), *BASE[1:]]
    after = [
        result("strip_prefix"),
        result("slice_prefix", devices=["cuda:0"]),
        result("unfixed_prefix", Outcome.XFAIL, error_class="key_mismatch", message="other text"),
    ]
    diff = compare(
        read_results(write(tmp_path / "a.jsonl", before)),
        read_results(write(tmp_path / "b.jsonl", after)),
    )
    assert [c.kind for c in diff.changes] == ["devices", "fix", "message"]
    assert diff.certified()


def test_missing_cells_fail_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = write(tmp_path / "a.jsonl", BASE), write(tmp_path / "b.jsonl", BASE[:2])
    assert main(["diff", str(a), str(b)]) == 1
    assert "Only in the baseline (missing now) (1)" in capsys.readouterr().out
    assert main(["diff", str(a), str(b), "--allow-missing"]) == 0
    assert main(["diff", str(b), str(a)]) == 0  # a new cell is not a regression


def test_unusable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.jsonl", BASE)
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert main(["diff", str(a), str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err
    assert main(["diff", str(a), str(tmp_path / "absent.jsonl")]) == 2


def test_a_cell_skipped_now_is_lost_coverage(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", BASE)
    skipped = replace(BASE[2], outcome=Outcome.SKIP, observed=None)
    b = write(tmp_path / "b.jsonl", [*BASE[:2], skipped])
    diff = compare(read_results(a), read_results(b))
    assert [c.kind for c in diff.changes] == ["skipped"]  # not its error class or message too
    assert not diff.certified()
    assert diff.exit_code() == 1
    assert diff.certified(allow_missing=True)
    assert "### Skipped now (lost coverage) (1)" in to_markdown(diff)
