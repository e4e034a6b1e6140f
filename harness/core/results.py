"""Results as data: ``results.jsonl``, an environment line, then one line per cell.

Each cell's line is appended, flushed and fsynced as the cell ends, so a crash or a kill loses
at most the line being written; the reader tolerates a torn last line and says so. The schema is
documented in docs/results-schema.md.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.core.cell import Cell
from harness.core.errors import UserError
from harness.core.oracle import Expectation
from harness.core.outcomes import Outcome
from harness.core.recipes import RECIPES, RecipeKind

SCHEMA_VERSION = 1


class ResultsError(UserError):
    """A results file cannot be used; the message names the file and line."""


@dataclass(frozen=True, kw_only=True)
class CellResult:
    cell: Cell
    outcome: Outcome
    expected: Expectation
    reason: str
    observed: dict[str, Any] | None
    error: dict[str, Any] | None
    duration_s: float
    # the earlier attempts of a cell rerun after an ERROR (--rerun-errors): outcome, reason,
    # error and duration of each, oldest first
    attempts: tuple[dict[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return self.cell.id

    @property
    def flaky(self) -> bool:
        """An ERROR that did not happen again: the cell ended otherwise on a rerun."""
        return bool(self.attempts) and self.outcome is not Outcome.ERROR

    def attempt(self) -> dict[str, Any]:
        """This result as one attempt of a rerun cell."""
        return {
            "outcome": str(self.outcome),
            "reason": self.reason,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
        }

    @property
    def recipe_kind(self) -> RecipeKind:
        return RECIPES[self.cell.recipe].kind

    @property
    def fragile(self) -> bool:
        """A known-bad recipe that worked here by accident."""
        return self.recipe_kind is RecipeKind.KNOWN_BAD and self.outcome is Outcome.PASS

    def describe(self) -> str:
        lines = [f"{self.id}: {self.outcome}", f"  expected: {self.expected.to_json()}"]
        lines.append(f"  reason:   {self.reason}")
        for number, earlier in enumerate(self.attempts, 1):
            lines.append(f"  attempt {number}: {earlier['outcome']}: {earlier['reason']}")
        if self.observed is not None:
            lines.append(f"  observed: {json.dumps(self.observed, sort_keys=True)[:2000]}")
        if self.error is not None:
            lines.append(f"  error:    {json.dumps(self.error, sort_keys=True)[:4000]}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "cell",
            "id": self.id,
            "cell": self.cell.to_json(),
            "recipe_kind": str(self.recipe_kind),
            "outcome": str(self.outcome),
            "fragile": self.fragile,
            "expected": self.expected.to_json(),
            "reason": self.reason,
            "observed": self.observed,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
            **({"attempts": list(self.attempts), "flaky": self.flaky} if self.attempts else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        for key, kinds in (("reason", str), ("observed", dict | None), ("error", dict | None)):
            if not isinstance(data.get(key), kinds):
                raise ValueError(f"its {key!r} is {type(data.get(key)).__name__}")
        attempts = data.get("attempts") or []
        if not isinstance(attempts, list) or not all(
            isinstance(a, dict) and isinstance(a.get("outcome"), str) for a in attempts
        ):
            raise ValueError("its 'attempts' is not a list of attempts")
        cell = Cell.from_json(data["cell"])
        if cell.id != data["id"]:
            raise ValueError(f"id {data['id']!r} does not match its cell ({cell.id!r})")
        return cls(
            cell=cell,
            outcome=Outcome(data["outcome"]),
            expected=Expectation.from_json(data["expected"]),
            reason=data["reason"],
            observed=data["observed"],
            error=data["error"],
            duration_s=float(data["duration_s"]),
            attempts=tuple(data.get("attempts") or ()),
        )


@dataclass
class ResultsFile:
    path: Path
    environment: dict[str, Any]
    results: list[CellResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)  # one per finished run or resume


def failing_by_id(results: Iterable[CellResult]) -> list[CellResult]:
    """The cells that fail a run (FAIL, XPASS, ERROR), in id order: the order cells finish in
    (several jobs at a time) is no order a report should keep."""
    return sorted((r for r in results if r.outcome.fails_run), key=lambda r: r.id)


def read_results(path: Path) -> ResultsFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ResultsError(
            f"{path}: not a results file (byte {exc.start} is not UTF-8 text)"
        ) from None
    lines = text.split("\n")
    torn = lines[-1] != ""  # the last line was cut before its newline: a crash mid-write
    if torn:
        lines = lines[:-1]
    else:
        lines.pop()
    if not lines:
        raise ResultsError(f"{path}: empty results file (no environment line)")
    environment = _parse(path, 1, lines[0])
    if environment.get("kind") != "environment":
        raise ResultsError(f"{path}:1: the first line must be the environment line")
    version = environment.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{path}:1: schema_version {version!r}; this harness reads {SCHEMA_VERSION}"
        )
    results = ResultsFile(path=path, environment=environment)
    if torn:
        results.warnings.append(f"{path}:{len(lines) + 1}: ignored a torn last line (a crash)")
    for number, line in enumerate(lines[1:], start=2):
        data = _parse(path, number, line)
        if data.get("kind") == "end":
            results.ends.append(data)
            continue
        try:
            results.results.append(CellResult.from_json(data))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ResultsError(f"{path}:{number}: not a cell result: {exc!r}") from None
    return results


def _parse(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ResultsError(f"{path}:{number}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}:{number}: expected a JSON object")
    return data


def merge(files: list[ResultsFile]) -> tuple[dict[str, Any], list[CellResult]]:
    """Results of several runners (one per GPU count, say) as one file's environment and cells.
    A cell id in two files is an error naming both: a merged file holds each cell once.

    Shards (inputs whose environment has a ``shard``) are grouped by the matrix they were cut
    from; each group must hold every shard of one count once (see :func:`check_shards`). The
    merged environment's ``shard`` is null: it is not one shard (each input keeps its own record
    in ``merged_from``)."""
    if not files:
        raise ResultsError("merge: no results files given")
    check_shards(files)
    seen: dict[str, Path] = {}
    cells: list[CellResult] = []
    for results in files:
        for result in results.results:
            if result.id in seen:
                raise ResultsError(
                    f"merge: cell {result.id} is in both {seen[result.id]} and {results.path}; "
                    "merge runs of different cells: a runner with more GPUs runs every cell of "
                    "a smaller runner too, unless given --min-gpus (one more than the smaller "
                    "runner's GPUs: --min-gpus 2 beside a one-GPU runner)"
                )
            seen[result.id] = results.path
            cells.append(result)
    # the writer adds the line's own kind and schema_version; each source keeps the rest
    own = [
        {k: v for k, v in f.environment.items() if k not in ("kind", "schema_version")}
        for f in files
    ]
    shared = {
        key: value
        for key, value in own[0].items()
        if all(other.get(key) == value for other in own[1:])
    }
    if any(environment.get("shard") is not None for environment in own):
        shared["shard"] = None  # the merged file is not one shard (a lone 1/1 input included)
    sources = [
        {"path": str(f.path), **environment} for f, environment in zip(files, own, strict=True)
    ]
    return {**shared, "merged_from": sources}, cells


def shard_of(results: ResultsFile) -> dict[str, Any] | None:
    """The input's ``shard`` record (index, count, matrix), or None for an unsharded run."""
    shard = results.environment.get("shard")
    if shard is None:
        return None
    if not (
        isinstance(shard, dict)
        and all(type(shard.get(key)) is int for key in ("index", "count"))
        and isinstance(shard.get("matrix"), str)
    ):
        raise ResultsError(
            f"{results.path}:1: shard {shard!r} is not a shard record (integers index and count, "
            "a matrix digest); rerun that shard with this harness, or drop the file from the merge"
        )
    return shard


def check_shards(files: list[ResultsFile]) -> None:
    """Every matrix that sharded inputs come from is there whole: one count, each index of
    1..count once. Unsharded inputs are not checked."""
    sets: dict[str, list[tuple[int, int, Path]]] = {}
    for results in files:
        shard = shard_of(results)
        if shard is not None:
            sets.setdefault(shard["matrix"], []).append(
                (shard["index"], shard["count"], results.path)
            )
    for results in files:
        shard = shard_of(results)
        cells = None if shard is None else shard.get("cells")
        if shard is not None and isinstance(cells, int) and len(results.results) < cells:
            raise ResultsError(
                f"merge: {results.path} holds {len(results.results)} of the {cells} cells of "
                f"shard {shard['index']}/{shard['count']} (its run stopped early); finish it "
                "with `ckpt-matrix run --resume` and the same --shard, then merge"
            )
    for matrix, members in sets.items():
        problem = _shard_set_problem(members)
        if problem is None:
            continue
        if len(sets) > 1:
            problem += (
                f" (the inputs hold shards of {len(sets)} matrices: {', '.join(sets)}; runners "
                "that expand different matrices, from other scenarios, GPUs, --visibility or -k, "
                "cut different shards)"
            )
        raise ResultsError(f"merge: shards of matrix {matrix}: {problem}")


def _shard_set_problem(members: list[tuple[int, int, Path]]) -> str | None:
    have = ", ".join(f"{index}/{count} from {path}" for index, count, path in sorted(members))
    counts = sorted({count for _, count, _ in members})
    if len(counts) > 1:
        return (
            f"cut into {' and '.join(map(str, counts))} shards ({have}); every runner of one "
            "matrix must give the same shard count N, so rerun the odd ones with it"
        )
    count = counts[0]
    by_index: dict[int, list[Path]] = {}
    for index, _, path in members:
        by_index.setdefault(index, []).append(path)
    problems = [
        f"{index}/{count} from {paths[0]} does not exist (indexes run 1..{count})"
        for index, paths in sorted(by_index.items())
        if not 1 <= index <= count
    ]
    problems += [
        f"{index}/{count} is in {len(paths)} files ({', '.join(map(str, paths))})"
        for index, paths in sorted(by_index.items())
        if len(paths) > 1
    ]
    missing = [f"{index}/{count}" for index in range(1, count + 1) if index not in by_index]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        problems.append(f"{', '.join(missing)} {verb} missing (have {have})")
    if not problems:
        return None
    fixes = []
    if any(not 1 <= index <= count for index in by_index):
        fixes.append("drop the file of a shard that does not exist")
    if any(len(paths) > 1 for paths in by_index.values()):
        fixes.append("give each shard once")
    if missing:
        fixes.append("run " + ("it" if len(missing) == 1 else "them"))
    rest = "the incomplete set" if missing else "that matrix's shards"
    return f"{'; '.join(problems)}; {', '.join(fixes)}, or merge without {rest}"


class ResultsWriter:
    """Appends one line per cell, flushed and fsynced; safe to call from several threads."""

    def __init__(self, path: Path, environment: dict[str, Any], *, resume: bool) -> None:
        self.path = path
        self.appended = 0  # cell lines written by this writer
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            self._repair_torn_tail()
            # Held open across appends (closed in close()), so no context manager here.
            self._handle: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115
        else:
            # the environment line appears whole or not at all: written beside, then renamed
            first = {"kind": "environment", "schema_version": SCHEMA_VERSION, **environment}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(first, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(path)
            self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (as above)

    def _repair_torn_tail(self) -> None:
        """Drop a torn last line (left by a kill mid-write) before appending after it."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)

    def append(self, result: CellResult) -> None:
        self._write(result.to_json())
        self.appended += 1

    def finish(self, **fields: Any) -> None:
        """The last line of a run (a resumed run adds its own): when it ended, and what else."""
        self._write({"kind": "end", **fields})

    def _write(self, data: dict[str, Any]) -> None:
        line = json.dumps(data, sort_keys=True) + "\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
