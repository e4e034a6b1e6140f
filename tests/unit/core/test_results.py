from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.oracle import Expectation
from harness.core.outcomes import ErrorClass, Outcome
from harness.core.results import (
    SCHEMA_VERSION,
    CellResult,
    ResultsError,
    ResultsFile,
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


def write(path: Path, env: dict[str, Any], *results: CellResult) -> Path:
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


MATRIX = "ab12cd34ef56ab12"
OTHER = "0123456789abcdef"


def shard_env(index: int, count: int, matrix: str = MATRIX) -> dict[str, Any]:
    record = {"index": index, "count": count, "source": "--shard", "matrix": matrix}
    return {**ENV, "shard": {**record, "matrix_cells": 3}}


def shard_files(
    tmp_path: Path, *shards: tuple[str, int, int, str], matrix: str = MATRIX
) -> list[ResultsFile]:
    """(name, index, count, recipe of its one cell) per file."""
    return [
        read_results(write(tmp_path / name, shard_env(index, count, matrix), result(recipe)))
        for name, index, count, recipe in shards
    ]


def test_merge_refuses_a_missing_shard(tmp_path: Path) -> None:
    files = shard_files(
        tmp_path, ("a.jsonl", 1, 3, "slice_prefix"), ("c.jsonl", 3, 3, "strip_prefix")
    )
    with pytest.raises(ResultsError) as raised:
        merge(files)
    message = str(raised.value)
    assert message.startswith(f"merge: shards of matrix {MATRIX}: 2/3 is missing (have 1/3 from ")
    assert "a.jsonl, 3/3 from " in message
    assert message.endswith("c.jsonl); run it, or merge without the incomplete set")


def test_merge_refuses_a_shard_given_twice(tmp_path: Path) -> None:
    files = shard_files(
        tmp_path,
        ("a.jsonl", 1, 2, "slice_prefix"),
        ("b.jsonl", 2, 2, "strip_prefix"),
        ("b-again.jsonl", 2, 2, "unfixed_prefix"),
    )
    with pytest.raises(
        ResultsError,
        match=rf"shards of matrix {MATRIX}: 2/2 is in 2 files \(.*b\.jsonl, .*b-again\.jsonl\); "
        "give each shard once",
    ):
        merge(files)


def test_merge_refuses_one_matrix_cut_two_ways(tmp_path: Path) -> None:
    files = shard_files(
        tmp_path, ("a.jsonl", 1, 2, "slice_prefix"), ("b.jsonl", 2, 3, "strip_prefix")
    )
    with pytest.raises(
        ResultsError, match=r"cut into 2 and 3 shards \(1/2 from .*a\.jsonl, 2/3 from"
    ):
        merge(files)


def test_merge_names_the_other_matrix_when_a_set_is_incomplete(tmp_path: Path) -> None:
    files = [
        *shard_files(tmp_path, ("a.jsonl", 1, 2, "slice_prefix")),
        *shard_files(tmp_path, ("b.jsonl", 2, 2, "strip_prefix"), matrix=OTHER),
    ]
    with pytest.raises(ResultsError, match=rf"shards of 2 matrices: {MATRIX}, {OTHER}"):
        merge(files)


def test_merge_refuses_a_shard_field_it_cannot_read(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.jsonl", {**ENV, "shard": {"index": "1", "count": 2}}, result())
    with pytest.raises(ResultsError, match=r"odd\.jsonl:1: shard .* is not a shard record"):
        merge([read_results(path)])


def test_a_complete_set_of_shards_merges_and_is_not_one_shard(tmp_path: Path) -> None:
    files = shard_files(
        tmp_path,
        ("c.jsonl", 3, 3, "unfixed_prefix"),
        ("a.jsonl", 1, 3, "slice_prefix"),
        ("b.jsonl", 2, 3, "strip_prefix"),
    )
    environment, cells = merge(files)
    assert [c.cell.recipe for c in cells] == ["unfixed_prefix", "slice_prefix", "strip_prefix"]
    assert environment["shard"] is None
    assert [s["shard"]["index"] for s in environment["merged_from"]] == [3, 1, 2]
    merged = read_results(write(tmp_path / "merged.jsonl", environment, *cells))
    assert len(merged.results) == 3
    # a merged file is no shard: it merges again with other inputs as an unsharded one
    more = write(tmp_path / "more.jsonl", ENV, result("replace_prefix"))
    assert len(merge([merged, read_results(more)])[1]) == 4


def test_a_single_shard_of_one_is_complete(tmp_path: Path) -> None:
    environment, cells = merge(shard_files(tmp_path, ("all.jsonl", 1, 1, "slice_prefix")))
    assert len(cells) == 1
    assert environment["shard"] is None  # not "1/1": the merged file is not a shard


def test_two_complete_matrices_and_unsharded_files_merge_together(tmp_path: Path) -> None:
    files = [
        *shard_files(
            tmp_path, ("a1.jsonl", 1, 2, "slice_prefix"), ("a2.jsonl", 2, 2, "strip_prefix")
        ),
        *shard_files(tmp_path, ("b1.jsonl", 1, 1, "unfixed_prefix"), matrix=OTHER),
        read_results(write(tmp_path / "plain.jsonl", ENV, result("replace_prefix"))),
    ]
    environment, cells = merge(files)
    assert len(cells) == 4
    assert environment["shard"] is None
    assert environment["torch"] == "2.14.1"
    assert "shard" not in environment["merged_from"][3]


def test_unsharded_files_merge_as_before(tmp_path: Path) -> None:
    # files from before sharding have no shard field: the merged environment gains none
    one = write(tmp_path / "1.jsonl", ENV, result())
    two = write(tmp_path / "2.jsonl", ENV, result("strip_prefix"))
    environment, _ = merge([read_results(one), read_results(two)])
    assert "shard" not in environment
    # files of unsharded runs record shard: null, which all share
    one = write(tmp_path / "3.jsonl", {**ENV, "shard": None}, result())
    two = write(tmp_path / "4.jsonl", {**ENV, "shard": None}, result("strip_prefix"))
    environment, _ = merge([read_results(one), read_results(two)])
    assert environment["shard"] is None


def test_shards_given_twice_are_named_before_their_shared_cells(tmp_path: Path) -> None:
    # the same shard twice holds the same cells: the shard is the clearer thing to name
    files = shard_files(
        tmp_path,
        ("a.jsonl", 1, 2, "slice_prefix"),
        ("b.jsonl", 2, 2, "strip_prefix"),
        ("a-again.jsonl", 1, 2, "slice_prefix"),
    )
    with pytest.raises(ResultsError, match=r"1/2 is in 2 files"):
        merge(files)


def test_merge_refuses_a_shard_whose_run_stopped_early(tmp_path: Path) -> None:
    short = {**shard_env(1, 2), "shard": {**shard_env(1, 2)["shard"], "cells": 2}}
    files = [
        read_results(write(tmp_path / "a.jsonl", short, result("slice_prefix"))),
        *shard_files(tmp_path, ("b.jsonl", 2, 2, "strip_prefix")),
    ]
    with pytest.raises(ResultsError, match=r"a\.jsonl holds 1 of the 2 cells of shard 1/2") as e:
        merge(files)
    assert "--resume" in str(e.value)


def test_attempts_round_trip_and_make_a_cell_flaky(tmp_path: Path) -> None:
    from dataclasses import replace

    first = result(outcome=Outcome.ERROR)
    flaky = replace(result(), attempts=(first.attempt(),))
    consistent = replace(first, attempts=(first.attempt(), first.attempt()))
    assert flaky.flaky
    assert not consistent.flaky
    assert not result().flaky
    path = write(
        tmp_path / "r.jsonl", ENV, flaky, replace(consistent, cell=result("as_saved").cell)
    )
    back = read_results(path).results
    assert back[0].attempts == flaky.attempts
    assert back[0].flaky
    assert back[0].to_json()["flaky"] is True
    assert "attempts" not in result().to_json()  # a cell run once reads as before
