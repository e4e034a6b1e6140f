"""Split one matrix into N disjoint shards, one per CI runner, Slurm array task or Indexed Job pod.

Every runner expands the same matrix and computes the same partition (a pure function of the
cells), then runs only its own shard; ``ckpt-matrix merge`` joins the shards' results files and
checks, by the matrix digest each file records, that every shard of a matrix is there once.

Cells that load one artifact (one :class:`~harness.core.cell.SaveKey`) stay in one shard, so no
save is repeated across runners. Groups are balanced by a rough cost (:func:`estimate_cost`).

Pure: no torch, no I/O; the environment is passed in as a mapping.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.cell import Cell
from harness.core.errors import UserError

SLURM_SOURCE = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
INDEXED_SOURCE = "JOB_COMPLETION_INDEX"
FORMS = (
    "K/N (shard K of N, 1 <= K <= N, e.g. 2/4), 'slurm' (a Slurm array task) "
    "or 'indexed:N' (a Kubernetes Indexed Job of N completions)"
)

_NUMBER = re.compile(r"[0-9]+")

# Relative costs, in units of one worker process of a tiny model on the CPU (spawned, nearly all
# of it `import torch`; docs/performance.md, "One worker"). Powers of two and their halves, so sums
# are exact in floating point whatever their order.
TINY_MODEL = 1.0
LARGE_MODEL = 4.0  # a real network (resnet): its build, its forward passes, torchvision's import
TRAIN_STATE = 1.5  # the saver trains with an optimizer and scheduler, the loader resumes them
GPU_VISIBLE = 1.75  # a worker that sees a GPU initialises CUDA (docs/performance.md, "On one H200")


class ShardError(UserError):
    """A bad shard setting: the message names where it came from, what is wrong and the fix."""


@dataclass(frozen=True, kw_only=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based), and where the setting came from."""

    index: int
    count: int
    source: str  # "--shard", "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT", "JOB_COMPLETION_INDEX"

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ShardError(
                f"{self.source}: shard {self.index}/{self.count} does not exist; "
                f"the index runs from 1 to the count"
            )

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "source": self.source}


def parse_shard(value: str, where: str, environ: Mapping[str, str]) -> Shard:
    """Read a shard setting given as ``where`` (``--shard``, ``--ckpt-shard``), in one of 3 forms.

    - ``K/N``: shard K of N, 1-based (``1/4`` .. ``4/4``).
    - ``slurm``: a Slurm array task. K is the task's position in the array:
      ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1``, and N is
      ``SLURM_ARRAY_TASK_COUNT``. Without ``SLURM_ARRAY_TASK_MIN`` the IDs are taken to start at
      0 (``--array=0-3``); without ``SLURM_ARRAY_TASK_STEP`` the step is 1. Where
      ``SLURM_ARRAY_TASK_MAX`` is set, the array must be an evenly spaced range (``--array=1,2,9``
      is refused: its tasks' positions cannot be told from the variables).
    - ``indexed:N``: a Kubernetes Indexed Job with ``completions: N``; K is
      ``JOB_COMPLETION_INDEX + 1`` (the index is 0-based).
    """
    text = value.strip()
    keyword = text.lower()
    if keyword == "slurm":
        return _slurm(where, environ)
    if keyword.startswith("indexed:"):
        return _indexed(text, where, environ)
    index_text, slash, count_text = text.partition("/")
    if not slash:
        raise ShardError(f"{where} {value!r}: not a shard; expected {FORMS}")
    count = _count(count_text, f"{where} {value!r}")
    if _NUMBER.fullmatch(index_text.strip()) is None:
        raise ShardError(
            f"{where} {value!r}: the index {index_text!r} is not a whole number; "
            f"give K/N with 1 <= K <= N (e.g. {where} 1/{count})"
        )
    index = int(index_text)
    if not 1 <= index <= count:
        raise ShardError(
            f"{where} {value!r}: index {index} is outside 1..{count} (indexes start at 1); "
            f"give K/N with 1 <= K <= N (e.g. {where} 1/{count} .. {where} {count}/{count})"
        )
    return Shard(index=index, count=count, source=where)


MAX_SHARDS = 10_000  # runners of one matrix; a larger count is a typo (and a slow partition)


def _count(text: str, source: str) -> int:
    if _NUMBER.fullmatch(text.strip()) is None:
        raise ShardError(
            f"{source}: the shard count {text!r} is not a whole number; "
            f"give the number of shards, at least 1 (e.g. 4)"
        )
    count = int(text)
    if count < 1:
        raise ShardError(f"{source}: the shard count is {count}; give at least 1 (e.g. 4)")
    if count > MAX_SHARDS:
        raise ShardError(
            f"{source}: {count} shards is more than {MAX_SHARDS}; give one shard per runner"
        )
    return count


def _variable(environ: Mapping[str, str], name: str, context: str, hint: str) -> int | None:
    """A non-negative integer from the environment, or None when the variable is not set."""
    raw = environ.get(name)
    if raw is None:
        return None
    if _NUMBER.fullmatch(raw.strip()) is None:
        raise ShardError(f"{context}: {name}={raw!r} is not a non-negative whole number; {hint}")
    return int(raw)


def _slurm(where: str, environ: Mapping[str, str]) -> Shard:
    context = f"{where} slurm"
    hint = (
        "run inside a Slurm array task (sbatch --array=0-3 ...), "
        f"or give the shard as K/N (e.g. {where} 1/4)"
    )
    task_id = _variable(environ, "SLURM_ARRAY_TASK_ID", context, hint)
    count = _variable(environ, "SLURM_ARRAY_TASK_COUNT", context, hint)
    missing = [
        name
        for name, read in (("SLURM_ARRAY_TASK_ID", task_id), ("SLURM_ARRAY_TASK_COUNT", count))
        if read is None
    ]
    if task_id is None or count is None:
        raise ShardError(
            f"{context}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
            f"is this an array job? {hint}"
        )
    if count < 1:
        raise ShardError(
            f"{context}: SLURM_ARRAY_TASK_COUNT={count}; an array has 1 task or more; {hint}"
        )
    minimum = _variable(environ, "SLURM_ARRAY_TASK_MIN", context, hint)
    step = _variable(environ, "SLURM_ARRAY_TASK_STEP", context, hint)
    maximum = _variable(environ, "SLURM_ARRAY_TASK_MAX", context, hint)
    first = 0 if minimum is None else minimum
    stride = 1 if step is None else step
    described = (
        f"SLURM_ARRAY_TASK_ID={task_id}, SLURM_ARRAY_TASK_COUNT={count}, "
        f"SLURM_ARRAY_TASK_MIN={'unset (taken as 0)' if minimum is None else minimum}, "
        f"SLURM_ARRAY_TASK_STEP={'unset (taken as 1)' if step is None else step}"
    )
    if maximum is not None:
        described += f", SLURM_ARRAY_TASK_MAX={maximum}"
    fix = (
        "submit the array as one evenly spaced range (sbatch --array=0-3 for 4 shards), "
        f"or give the shard as K/N (e.g. {where} 1/4)"
    )
    if stride < 1:
        raise ShardError(f"{context}: {described}: the step must be at least 1; {fix}")
    if maximum is not None and maximum - first != (count - 1) * stride:
        raise ShardError(
            f"{context}: {described}: {count} tasks do not evenly span {first}..{maximum}, "
            f"so a task's position cannot be told; {fix}"
        )
    offset = task_id - first
    if offset < 0 or offset % stride or offset // stride >= count:
        raise ShardError(
            f"{context}: {described}: the task is not one of the array's {count} positions; {fix}"
        )
    return Shard(index=offset // stride + 1, count=count, source=SLURM_SOURCE)


def _indexed(text: str, where: str, environ: Mapping[str, str]) -> Shard:
    count = _count(text.partition(":")[2], f"{where} {text!r}")
    hint = (
        f"run in a Kubernetes Job with completionMode: Indexed and completions: {count}, "
        f"or give the shard as K/N (e.g. {where} 1/4)"
    )
    raw = environ.get(INDEXED_SOURCE)
    if raw is None:
        raise ShardError(
            f"{where} {text!r}: {INDEXED_SOURCE} is not set; is this an Indexed Job? {hint}"
        )
    if _NUMBER.fullmatch(raw.strip()) is None:
        raise ShardError(
            f"{where} {text!r}: {INDEXED_SOURCE}={raw!r} is not a non-negative whole number; {hint}"
        )
    index = int(raw)
    if index >= count:
        raise ShardError(
            f"{where} {text!r}: {INDEXED_SOURCE}={index} but the indexes of {count} completions "
            f"run from 0 to {count - 1}; make N the Job's completions ({where} indexed:"
            f"<completions>)"
        )
    return Shard(index=index + 1, count=count, source=INDEXED_SOURCE)


def _worker_cost(cell: Cell, *, visible: bool) -> float:
    cost = LARGE_MODEL if cell.model_spec.large else TINY_MODEL
    if cell.training:
        cost *= TRAIN_STATE
    if visible:
        cost *= GPU_VISIBLE
    return cost


def estimate_cost(cell: Cell) -> float:
    """A rough relative cost of the cell's load worker, in units of one tiny-model CPU worker.

    A worker's time is mostly interpreter start-up and imports, so a large model (a resnet: a
    real network, and torchvision's imports where it needs them) costs :data:`LARGE_MODEL` (4)
    units, a tiny one 1; a train_state cell (an optimizer and scheduler to build and resume) costs
    :data:`TRAIN_STATE` (1.5) times as much, and a worker that sees a GPU :data:`GPU_VISIBLE`
    (1.75) times. The save a cell shares with others is counted once per group, by
    :func:`save_cost` (a single cell cannot know how many share it).
    """
    return _worker_cost(cell, visible=bool(cell.load_visibility))


def save_cost(cell: Cell) -> float:
    """The cost of the save job behind ``cell`` (the same for every cell of its artifact)."""
    return _worker_cost(cell, visible=bool(cell.save_visibility))


def group_cost(cells: Iterable[Cell]) -> float:
    """One artifact's group: its save once, and every load; an exact sum whatever the order."""
    listed = list(cells)
    if not listed:
        return 0.0
    return math.fsum([save_cost(listed[0]), *(estimate_cost(cell) for cell in listed)])


def partition(cells: Sequence[Cell], count: int) -> list[tuple[Cell, ...]]:
    """``count`` disjoint shards whose union is ``cells``, shard K at position K - 1.

    Cells of one artifact (``save_key.id``) share a shard. Groups go, most costly first (ties by
    artifact id), to the least loaded shard (ties to the lowest index), so the assignment depends
    only on the set of cells, not on their order; each shard keeps its cells in the input order.
    With more shards than groups, some shards are empty.
    """
    if count < 1:
        raise ShardError(f"partition: {count} shards; give at least 1")
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.save_key.id, []).append(cell)
    costs = {key: group_cost(members) for key, members in groups.items()}
    loads = [0.0] * count
    assigned: dict[str, int] = {}
    for key in sorted(groups, key=lambda key: (-costs[key], key)):
        target = min(range(count), key=lambda index: (loads[index], index))
        assigned[key] = target
        loads[target] += costs[key]
    shards: list[list[Cell]] = [[] for _ in range(count)]
    for cell in cells:
        shards[assigned[cell.save_key.id]].append(cell)
    return [tuple(shard) for shard in shards]


def select(cells: Sequence[Cell], shard: Shard) -> tuple[Cell, ...]:
    """The cells of ``shard``: its part of :func:`partition` (possibly empty)."""
    return partition(cells, shard.count)[shard.index - 1]


def matrix_digest(cells: Iterable[Cell]) -> str:
    """16 hex digits naming the whole matrix (its cell ids, order aside) before sharding."""
    ids = sorted({cell.id for cell in cells})
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:16]


def shard_record(shard: Shard, all_cells: Sequence[Cell]) -> dict[str, Any]:
    """The environment line's ``shard`` field: the shard, how many cells it holds, and the
    matrix it is a part of."""
    return {
        **shard.to_json(),
        "cells": len(select(all_cells, shard)),
        "matrix": matrix_digest(all_cells),
        "matrix_cells": len(all_cells),
    }
