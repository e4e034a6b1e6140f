"""What the orchestrator asks a worker to do, and what the worker reports back, as JSON.

Both sides import this module; it holds no torch. A spec travels to the worker as a file; the
worker writes its report atomically to ``report_path``. The parent falls back to the exit code and
the stderr tail when no usable report exists.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import UnionType
from typing import (
    Any,
    Literal,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

Role = Literal["save", "load"]

# Fixed seeds: the saver trains from one, the loader builds from another, so that every tensor
# of a freshly built loader differs from the saved ones and a load that does nothing is caught.
SAVE_SEED = 0
LOAD_SEED = 1
TRAIN_STEPS = 3
# train_state cells: the saver trains RESUME_AT steps, saves, trains RESUME_MORE more and records
# the result; the loader resumes from the file and must reach it bitwise.
RESUME_AT = 3
RESUME_MORE = 3
# A distributed saver reports its optimizer's state among its tensors under this prefix; a
# recipe that restores only the model is compared on the other entries.
OPTIMIZER_PREFIX = "optimizer."


@dataclass(frozen=True, kw_only=True)
class SaveSpec:
    role: Literal["save"] = "save"
    cell_key: str
    model: str
    layout: str
    variant: str
    artifact_path: str
    report_path: str
    device: str = "cpu"  # where the saver's model lives (logical, in its own visibility)
    tag_as: str | None = None  # save on the CPU but tag storages with this location (simulation)
    training: str = ""  # train_state artifacts: the regime
    serialization: str = "zip"  # zip or legacy
    wrapper: str = "none"  # what wraps the model inside its layout (harness.core.axes.Wrapper)


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    role: Literal["load"] = "load"
    cell_id: str
    model: str
    layout: str
    recipe: str
    artifact_path: str
    artifact_sha256: str
    report_path: str
    map_location: str = "none"  # a policy name from harness.core.devices.MAP_LOCATIONS
    saved_tag: str = "cpu"  # the location the saver's storages carry
    training: str = ""  # train_state cells: the regime to resume
    wrapper: str = "none"  # what wraps the fresh model inside its layout


@dataclass(frozen=True, kw_only=True)
class GoldenSpec:
    """Load a team's own checkpoint with its format's safe loader and report every tensor's
    digest: to record it, or to compare with a record (``expected_sha256`` set)."""

    role: Literal["golden"] = "golden"
    label: str  # the path as the user gave it: the cell's name
    path: str
    report_path: str
    safe_globals: tuple[str, ...] = ()  # module.Name globals the user allows a weights_only load
    expected_sha256: str = ""  # verify: the file must still be the recorded one
    # where the tensors load (golden record --map-location; verify: the recording's choice):
    # auto (as saved where every saved device is visible, else cpu), cpu, cuda:K, as-saved
    map_location: str = "auto"


Spec = SaveSpec | LoadSpec | GoldenSpec


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def spec_to_json(spec: Spec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_json(data: dict[str, Any], where: str) -> Spec:
    role = data.get("role")
    try:
        if role == "save":
            return SaveSpec(**data)
        if role == "load":
            return LoadSpec(**data)
        if role == "golden":
            return GoldenSpec(**{**data, "safe_globals": tuple(data.get("safe_globals", ()))})
    except TypeError as exc:
        raise ValueError(f"{where}: malformed {role} spec: {exc}") from None
    raise ValueError(f"{where}: unknown role {role!r}; expected 'save', 'load' or 'golden'")


def rank_path(path: Path, rank: int) -> Path:
    """Where rank ``rank`` of a distributed job writes its own copy of a file (a report, a log,
    a checkpoint): rank 0 at ``path``, the others beside it (``load-report.rank1.json``)."""
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


# --- what a worker reports ------------------------------------------------------------------
# The reports are typed: each (role, status) names a TypedDict, and ``report_problem`` checks a
# report read from disk against it, so the verdict never meets a missing field as a KeyError.


class Probe(TypedDict):
    """What the worker saw of its devices."""

    pid: int
    cuda_visible_devices: str | None
    device_count: int
    uuids: list[str]


class TensorRecord(TypedDict):
    digest: str
    dtype: str
    shape: list[int]
    device: str


class SavedReport(TypedDict):
    status: Literal["saved"]
    sha256: str
    bytes: int
    tensors: dict[str, TensorRecord]
    output_digest: str | None
    output_device: str | None
    tagged_as: str | None
    serialization: str
    probe: Probe
    torch: str


class RaisedReport(TypedDict):
    """A save or load that raised: an observation, classified."""

    status: Literal["raised"]
    error_class: str
    exception_type: str
    message: str
    probe: Probe
    torch: str


class LoadedReport(TypedDict):
    status: Literal["loaded"]
    tensors: dict[str, TensorRecord]
    output_digest: str | None
    output_device: str | None
    probe: Probe
    torch: str


class CrashedReport(TypedDict):
    """The job itself broke (an exception the job did not expect)."""

    status: Literal["crashed"]
    exception_type: str
    message: str


REPORTS: dict[str, dict[str, type]] = {
    "save": {"saved": SavedReport, "raised": RaisedReport, "crashed": CrashedReport},
    "load": {"loaded": LoadedReport, "raised": RaisedReport, "crashed": CrashedReport},
}


def report_problem(report: dict[str, Any], role: str) -> str | None:
    """What is wrong with a worker's report for ``role`` (save, load), or None: an unknown
    status, a missing field, or a field of the wrong type (probe and tensor records included)."""
    kinds = REPORTS.get(role)
    if kinds is None:
        return None
    status = report.get("status")
    if status not in kinds:
        return f"its status is {status!r}; a {role} report's is one of {', '.join(kinds)}"
    problem = _fields_problem(report, kinds[status], f"the {status} report")
    if problem is None and "probe" in report:
        problem = _fields_problem(report["probe"], Probe, "its probe")
    for name, record in (report.get("tensors") or {}).items() if problem is None else ():
        problem = _fields_problem(record, TensorRecord, f"its tensor {name!r}")
        if problem is not None:
            break
    return problem


def _fields_problem(data: Any, kind: type, what: str) -> str | None:
    if not isinstance(data, dict):
        return f"{what} is {type(data).__name__}, not an object"
    hints = get_type_hints(kind)
    for field_name in sorted(kind.__required_keys__):  # type: ignore[attr-defined]
        if field_name not in data:
            return f"{what} lacks the field {field_name!r}"
        if not _is(data[field_name], hints[field_name]):
            return (
                f"{what}'s field {field_name!r} is {type(data[field_name]).__name__}, "
                f"expected {hints[field_name]}"
            )
    return None


def _is(value: Any, hint: Any) -> bool:
    """A shallow check of a JSON value against a field's annotation."""
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (UnionType, Union):
        return any(_is(value, arm) for arm in get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return (
        isinstance(value, hint)
        if isinstance(hint, type) and not is_typeddict(hint)
        else (isinstance(value, dict))
    )


def read_report(path: Path) -> dict[str, Any] | None:
    """The worker's report, or None when it is missing or unreadable (the child died first)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
