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
from typing import Any, Literal

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
    wrapper: str = "none"  # what wraps the model inside its layout (harness.axes.Wrapper)


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
    map_location: str = "none"  # a policy name from harness.devices.MAP_LOCATIONS
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
    map_location: str = ""  # verify: the record's policy; cpu stays cpu, anything else is
    # decided by the worker (none where every saved device exists, else cpu)


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


def read_report(path: Path) -> dict[str, Any] | None:
    """The worker's report, or None when it is missing or unreadable (the child died first)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
