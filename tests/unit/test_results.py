from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.axes import Format, Layout
from harness.cell import Cell
from harness.oracle import Expectation
from harness.outcomes import ErrorClass, Outcome
from harness.results import (
    SCHEMA_VERSION,
    CellResult,
    ResultsError,
    ResultsWriter,
    merge,
    read_results,
)

ENV = {"torch": "2.14.1", "python": "3.11.7"}


def result(recipe: str = "slice_prefix", outcome: Outcome = Outcome.PASS) -> CellResult:
    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe=recipe,
    )
    return CellResult(
        cell=cell,
        outcome=outcome,
        expected=Expectation(error=None, reason="r", tensor_device="cpu"),
        reason="10 tensors bitwise equal",
        observed={"status": "loaded"},
        error=None,
        duration_s=2.5,
    )


def test_round_trip_and_fragile(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, ENV, resume=False) as writer:
        writer.append(result())
        writer.append(result("strip_prefix"))
    read = read_results(path)
    assert read.environment == {"kind": "environment", "schema_version": SCHEMA_VERSION, **ENV}
    assert [r.cell.recipe for r in read.results] == ["slice_prefix", "strip_prefix"]
    assert read.results[0] == result()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1]["fragile"] is True
    assert lines[2]["fragile"] is False
    assert {"id", "outcome", "expected", "observed", "duration_s", "error"} <= lines[1].keys()


def test_torn_last_line_is_ignored_then_repaired_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, ENV, resume=False) as writer:
        writer.append(result())
    with open(path, "a") as handle:
        handle.write('{"kind": "cell", "id": "half')  # a kill in the middle of a write
    read = read_results(path)
    assert len(read.results) == 1
    assert "torn last line" in read.warnings[0]
    with ResultsWriter(path, ENV, resume=True) as writer:
        writer.append(result("strip_prefix"))
    again = read_results(path)
    assert [r.cell.recipe for r in again.results] == ["slice_prefix", "strip_prefix"]
    assert again.warnings == []


def test_bad_files_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("")
    with pytest.raises(ResultsError, match="empty results file"):
        read_results(path)
    path.write_text('{"kind": "cell"}\n')
    with pytest.raises(
        ResultsError, match=r"r\.jsonl:1: the first line must be the environment line"
    ):
        read_results(path)
    path.write_text('{"kind": "environment", "schema_version": 99}\n')
    with pytest.raises(ResultsError, match="schema_version 99; this harness reads 1"):
        read_results(path)
    path.write_text('{"kind": "environment", "schema_version": 1}\nnot json\n')
    with pytest.raises(ResultsError, match=r"r\.jsonl:2: not JSON"):
        read_results(path)
    path.write_text('{"kind": "environment", "schema_version": 1}\n{"id": "x"}\n')
    with pytest.raises(ResultsError, match=r"r\.jsonl:2: not a cell result"):
        read_results(path)
    with pytest.raises(ResultsError, match="cannot read results"):
        read_results(tmp_path / "absent.jsonl")


def test_describe_names_everything() -> None:
    r = result(outcome=Outcome.XFAIL)
    r2 = CellResult(
        cell=r.cell,
        outcome=Outcome.ERROR,
        expected=Expectation(error=ErrorClass.KEY_MISMATCH, reason="k", tensor_device="cpu"),
        reason="crash",
        observed=None,
        error={"phase": "load"},
        duration_s=1.0,
    )
    assert r.id in r.describe()
    assert "observed" in r.describe()
    assert '"phase": "load"' in r2.describe()


def test_end_lines_are_kept_apart_from_cells(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, ENV, resume=False) as writer:
        writer.append(result())
        writer.finish(finished_at="2026-11-27T08:00:00+00:00", cells_run=1)
    with ResultsWriter(path, ENV, resume=True) as writer:
        writer.append(result("strip_prefix"))
        writer.finish(finished_at="2026-11-27T09:00:00+00:00", cells_run=1)
    read = read_results(path)
    assert [r.cell.recipe for r in read.results] == ["slice_prefix", "strip_prefix"]
    assert [end["finished_at"] for end in read.ends] == [
        "2026-11-27T08:00:00+00:00",
        "2026-11-27T09:00:00+00:00",
    ]


def write(path: Path, env: dict[str, str], *results: CellResult) -> Path:
    with ResultsWriter(path, env, resume=False) as writer:
        for one in results:
            writer.append(one)
    return path


def test_merge_keeps_every_cell_and_each_runners_environment(tmp_path: Path) -> None:
    one = write(tmp_path / "1gpu.jsonl", {**ENV, "hostname": "a"}, result())
    two = write(tmp_path / "2gpu.jsonl", {**ENV, "hostname": "b"}, result("strip_prefix"))
    environment, cells = merge([read_results(one), read_results(two)])
    assert [c.cell.recipe for c in cells] == ["slice_prefix", "strip_prefix"]
    assert environment["torch"] == "2.14.1"  # the same on both: kept at the top
    assert "hostname" not in environment  # differs: only in each source
    assert [s["hostname"] for s in environment["merged_from"]] == ["a", "b"]
    assert environment["merged_from"][0]["path"] == str(one)
    for described in (environment, *environment["merged_from"]):  # the writer's own fields
        assert "kind" not in described
        assert "schema_version" not in described
    merged = write(tmp_path / "merged.jsonl", environment, *cells)
    assert len(read_results(merged).results) == 2


def test_merge_refuses_a_cell_in_two_files(tmp_path: Path) -> None:
    one = write(tmp_path / "a.jsonl", ENV, result())
    two = write(tmp_path / "b.jsonl", ENV, result())
    with pytest.raises(
        ResultsError, match=r"cell .*slice_prefix is in both .*a\.jsonl and .*b\.jsonl"
    ):
        merge([read_results(one), read_results(two)])
    with pytest.raises(ResultsError, match="no results files given"):
        merge([])
