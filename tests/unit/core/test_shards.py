from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.matrix import expand
from harness.core.recipes import RECIPES, TRAININGS
from harness.core.scenarios import default_scenarios_dir, load_scenarios
from harness.core.shards import (
    INDEXED_SOURCE,
    SLURM_SOURCE,
    Shard,
    ShardError,
    estimate_cost,
    group_cost,
    matrix_digest,
    parse_shard,
    partition,
    select,
    shard_record,
)
from harness.core.zoo import MODELS


def default_cells() -> tuple[Cell, ...]:
    # As harness/cli.py's load_matrix builds it on a machine with no GPU.
    return expand(load_scenarios(default_scenarios_dir()), subsets=[]).cells


# --- parse_shard: accepted forms ---------------------------------------------------------------

SLURM_0_3 = {
    "SLURM_ARRAY_TASK_COUNT": "4",
    "SLURM_ARRAY_TASK_MIN": "0",
    "SLURM_ARRAY_TASK_MAX": "3",
}


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("2/4", {}, Shard(index=2, count=4, source="--shard")),
        ("1/1", {}, Shard(index=1, count=1, source="--shard")),
        (" 4/4 ", {}, Shard(index=4, count=4, source="--shard")),
        ("12/12", {}, Shard(index=12, count=12, source="--shard")),
        # sbatch --array=0-3: IDs 0..3 are shards 1..4
        (
            "slurm",
            {**SLURM_0_3, "SLURM_ARRAY_TASK_ID": "0"},
            Shard(index=1, count=4, source=SLURM_SOURCE),
        ),
        (
            "SLURM",
            {**SLURM_0_3, "SLURM_ARRAY_TASK_ID": "3"},
            Shard(index=4, count=4, source=SLURM_SOURCE),
        ),
        # no SLURM_ARRAY_TASK_MIN: IDs are taken to start at 0
        (
            "slurm",
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"},
            Shard(index=3, count=3, source=SLURM_SOURCE),
        ),
        # sbatch --array=1-4
        (
            "slurm",
            {
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            Shard(index=1, count=4, source=SLURM_SOURCE),
        ),
        # sbatch --array=1-7:2 (1, 3, 5, 7): task 5 is the third
        (
            "slurm",
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "7",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            Shard(index=3, count=4, source=SLURM_SOURCE),
        ),
        ("indexed:4", {INDEXED_SOURCE: "0"}, Shard(index=1, count=4, source=INDEXED_SOURCE)),
        ("indexed:4", {INDEXED_SOURCE: "3"}, Shard(index=4, count=4, source=INDEXED_SOURCE)),
        ("Indexed:1", {INDEXED_SOURCE: "0"}, Shard(index=1, count=1, source=INDEXED_SOURCE)),
    ],
)
def test_accepted_forms(value: str, environ: dict[str, str], expected: Shard) -> None:
    assert parse_shard(value, "--shard", environ) == expected


def test_the_option_name_is_the_source_of_a_k_of_n_shard() -> None:
    shard = parse_shard("3/5", "--ckpt-shard", {})
    assert shard.source == "--ckpt-shard"
    assert shard.label == "3/5"
    assert shard.to_json() == {"index": 3, "count": 5, "source": "--ckpt-shard"}


# --- parse_shard: errors name where the setting came from, the bad value and the fix -----------


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("5/4", ["'5/4'", "index 5 is outside 1..4", "--ckpt-shard 1/4"]),
        ("0/4", ["'0/4'", "index 0 is outside 1..4", "start at 1"]),
        ("x", ["'x'", "not a shard", "K/N", "slurm", "indexed:N"]),
        ("", ["''", "not a shard"]),
        ("1/0", ["'1/0'", "shard count is 0", "at least 1"]),
        ("1/x", ["'1/x'", "shard count 'x' is not a whole number"]),
        ("x/4", ["'x/4'", "index 'x' is not a whole number"]),
        ("-1/4", ["'-1/4'", "index '-1' is not a whole number"]),
        ("1.5/4", ["'1.5/4'", "index '1.5'"]),
        ("1/4/2", ["'1/4/2'", "shard count '4/2'"]),
        ("indexed:", ["'indexed:'", "shard count '' is not a whole number"]),
        ("indexed:x", ["'indexed:x'", "shard count 'x'"]),
        ("indexed:0", ["'indexed:0'", "shard count is 0"]),
    ],
)
def test_bad_option_values(value: str, named: list[str]) -> None:
    with pytest.raises(ShardError) as raised:
        parse_shard(value, "--ckpt-shard", {})
    message = str(raised.value)
    assert message.startswith("--ckpt-shard ")
    for part in named:
        assert part in message


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (
            {},
            [
                "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set",
                "array job",
                "--array=0-3",
            ],
        ),
        (
            {"SLURM_ARRAY_TASK_ID": "1"},
            ["SLURM_ARRAY_TASK_COUNT is not set", "is this an array job?"],
        ),
        ({"SLURM_ARRAY_TASK_COUNT": "4"}, ["SLURM_ARRAY_TASK_ID is not set"]),
        (
            {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
            ["SLURM_ARRAY_TASK_ID='x' is not a non-negative whole number"],
        ),
        (
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "four"},
            ["SLURM_ARRAY_TASK_COUNT='four'"],
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "-1",
            },
            ["SLURM_ARRAY_TASK_MIN='-1'"],
        ),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"}, ["SLURM_ARRAY_TASK_COUNT=0"]),
        # without MIN the IDs are taken as 0-based: ID 4 of 4 tasks is past the end
        (
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},
            ["SLURM_ARRAY_TASK_ID=4", "SLURM_ARRAY_TASK_MIN=unset (taken as 0)", "not one of"],
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "0",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            ["SLURM_ARRAY_TASK_ID=0", "SLURM_ARRAY_TASK_MIN=1", "not one of the array's 4"],
        ),
        # sbatch --array=1,2,9: no evenly spaced range, positions cannot be told
        (
            {
                "SLURM_ARRAY_TASK_ID": "9",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "9",
            },
            ["SLURM_ARRAY_TASK_MAX=9", "do not evenly span 1..9", "--array=0-3"],
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            ["SLURM_ARRAY_TASK_ID=2", "SLURM_ARRAY_TASK_STEP=2", "not one of"],
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "0",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_STEP": "0",
            },
            ["SLURM_ARRAY_TASK_STEP=0", "at least 1"],
        ),
    ],
)
def test_bad_slurm_arrays(environ: dict[str, str], named: list[str]) -> None:
    with pytest.raises(ShardError) as raised:
        parse_shard("slurm", "--shard", environ)
    message = str(raised.value)
    assert message.startswith("--shard slurm: ")
    for part in named:
        assert part in message


@pytest.mark.parametrize(
    ("value", "environ", "named"),
    [
        ("indexed:4", {}, ["JOB_COMPLETION_INDEX is not set", "Indexed Job", "completions: 4"]),
        ("indexed:4", {INDEXED_SOURCE: "x"}, ["JOB_COMPLETION_INDEX='x'"]),
        ("indexed:4", {INDEXED_SOURCE: "-1"}, ["JOB_COMPLETION_INDEX='-1'"]),
        ("indexed:4", {INDEXED_SOURCE: "4"}, ["JOB_COMPLETION_INDEX=4", "run from 0 to 3"]),
    ],
)
def test_bad_indexed_jobs(value: str, environ: dict[str, str], named: list[str]) -> None:
    with pytest.raises(ShardError) as raised:
        parse_shard(value, "--shard", environ)
    message = str(raised.value)
    assert message.startswith(f"--shard {value!r}: ")
    for part in named:
        assert part in message


def test_a_shard_that_cannot_exist_is_refused() -> None:
    with pytest.raises(ShardError, match=r"shard 5/4 does not exist"):
        Shard(index=5, count=4, source="test")
    with pytest.raises(ShardError, match=r"shard 0/4 does not exist"):
        Shard(index=0, count=4, source="test")
    with pytest.raises(ShardError, match="partition: 0 shards"):
        partition(default_cells(), 0)


# --- costs ------------------------------------------------------------------------------------


def cell(
    model: str = "trap", recipe: str = "as_saved", training: str = "", fmt: Format = Format.WEIGHTS
) -> Cell:
    return Cell(
        model=model,
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=fmt,
        recipe=recipe,
        training=training,
    )


def test_costs_rank_resnet_above_tiny_and_train_state_above_weights() -> None:
    tiny, resnet = cell("trap"), cell("resnet18")
    trained = cell("trap", "resume", "sgd_steplr", Format.TRAIN_STATE)
    assert estimate_cost(tiny) == 1.0
    assert estimate_cost(resnet) >= 3 * estimate_cost(tiny)
    assert estimate_cost(trained) > estimate_cost(tiny)
    assert estimate_cost(cell("resnet18", "resume", "sgd_steplr", Format.TRAIN_STATE)) > (
        estimate_cost(resnet)
    )
    gpu = dataclasses.replace(tiny, load_visibility=(0,))
    assert estimate_cost(gpu) > estimate_cost(tiny)
    # one save and one load per cell of the group
    assert group_cost([tiny, cell("trap", "slice_prefix")]) == 3.0
    assert group_cost([]) == 0.0


# --- partition on the real default matrix ------------------------------------------------------


def groups_of(cells: Sequence[Cell]) -> dict[str, list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for one in cells:
        groups.setdefault(one.save_key.id, []).append(one)
    return groups


def shard_loads(shards: list[tuple[Cell, ...]]) -> list[float]:
    return [sum(group_cost(members) for members in groups_of(shard).values()) for shard in shards]


def check_partition(cells: Sequence[Cell], shards: list[tuple[Cell, ...]], count: int) -> None:
    assert len(shards) == count
    # disjoint, and together the whole input (as a multiset of ids)
    assert Counter(one.id for shard in shards for one in shard) == Counter(one.id for one in cells)
    # each shard keeps the input order
    position = {one.id: number for number, one in enumerate(cells)}
    for shard in shards:
        assert [position[one.id] for one in shard] == sorted(position[one.id] for one in shard)
    # an artifact is saved in one shard only
    owner: dict[str, int] = {}
    for number, shard in enumerate(shards):
        for one in shard:
            assert owner.setdefault(one.save_key.id, number) == number
    # greedy balance: no shard is above the mean by more than the largest group
    if cells:
        loads = shard_loads(shards)
        largest = max(group_cost(members) for members in groups_of(cells).values())
        assert max(loads) <= sum(loads) / count + largest


@pytest.mark.parametrize("count", range(1, 9))
def test_the_default_matrix_splits_into_disjoint_balanced_shards(count: int) -> None:
    cells = default_cells()
    shards = partition(cells, count)
    check_partition(cells, shards, count)
    assert all(shards)  # 49 artifacts: no shard is empty up to 8
    for index in range(1, count + 1):
        assert select(cells, Shard(index=index, count=count, source="t")) == shards[index - 1]
    loads = shard_loads(shards)  # the default matrix balances well: within 10 % of the mean
    assert max(loads) <= 1.1 * sum(loads) / count


def test_more_shards_than_artifacts_leaves_some_empty() -> None:
    cells = default_cells()
    artifacts = len(groups_of(cells))
    shards = partition(cells, artifacts + 3)
    check_partition(cells, shards, artifacts + 3)
    assert sum(1 for shard in shards if not shard) == 3
    assert partition([], 3) == [(), (), ()]


def test_the_matrix_digest_names_the_matrix_whatever_its_order() -> None:
    cells = default_cells()
    digest = matrix_digest(cells)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert matrix_digest(tuple(reversed(cells))) == digest
    assert matrix_digest(cells[1:]) != digest
    record = shard_record(Shard(index=2, count=4, source="--shard"), cells)
    assert record == {
        "index": 2,
        "count": 4,
        "source": "--shard",
        "cells": len(partition(cells, 4)[1]),
        "matrix": digest,
        "matrix_cells": len(cells),
    }


# --- partition on generated cell lists ---------------------------------------------------------

LAYOUTS = list(Layout)


@st.composite
def cells_(draw: st.DrawFn) -> Cell:
    recipe = draw(st.sampled_from(sorted(RECIPES)))
    return Cell(
        model=draw(st.sampled_from(sorted(MODELS))),
        save_layout=draw(st.sampled_from(LAYOUTS)),
        load_layout=draw(st.sampled_from(LAYOUTS)),
        format=draw(st.sampled_from(list(Format))),
        recipe=recipe,
        save_visibility=draw(st.sampled_from([(), (0,), (1, 0)])),
        load_visibility=draw(st.sampled_from([(), (0,), (0, 1)])),
        training=draw(st.sampled_from(["", *sorted(TRAININGS)])),
    )


cell_lists = st.lists(cells_(), max_size=30, unique_by=lambda one: one.id)


@given(cells=cell_lists, count=st.integers(1, 9), data=st.data())
def test_partition_properties(cells: list[Cell], count: int, data: st.DataObject) -> None:
    shards = partition(cells, count)
    check_partition(cells, shards, count)
    assert partition(cells, count) == shards  # every runner computes the same
    # which cells go where depends on the set of cells, not on the order they came in
    shuffled = data.draw(st.permutations(cells))
    again = partition(shuffled, count)
    assert [{one.id for one in shard} for shard in again] == [
        {one.id for one in shard} for shard in shards
    ]
    assert matrix_digest(shuffled) == matrix_digest(cells)
