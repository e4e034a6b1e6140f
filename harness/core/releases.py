"""PyTorch releases a session installs: the requirement strings for a release, the torchvision
built for it, and whether a pip constraint caps it. Pure and standard-library only: the noxfile
plans with it before anything is installed.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torchvision's release for each torch minor release (torchvision 0.(N+15) goes with torch 2.N;
# its patch follows torch's). None known for a torch newer than this table.
TORCHVISION_MINOR = {minor: minor + 15 for minor in range(4, 15)}


@dataclass(frozen=True)
class Release:
    """What to install for one torch release: torch, and torchvision where one is built for it."""

    label: str  # "2.15.0", or the requirement strings as given
    torch: str  # "torch==2.15.0"
    torchvision: str | None  # "torchvision==0.29.1"; None: no release is known for this torch

    @property
    def requirements(self) -> list[str]:
        return [self.torch] + ([self.torchvision] if self.torchvision else [])

    @property
    def without_torchvision(self) -> str:
        """Why the vision models' cells do not run under this release, or ""."""
        if self.torchvision:
            return ""
        return f"no torchvision is known for {self.torch}: the vision models' cells are not run"


_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def release(text: str) -> Release:
    """``"2.15.0"`` (torch and the torchvision built for it) or requirement strings as pip takes
    them (``"torch==2.14.1 torchvision==0.29.1"``). Raises ValueError naming what it expected."""
    text = text.strip()
    match = _VERSION.match(text)
    if match is not None:
        major, minor, patch = (int(part) for part in match.groups())
        vision_minor = TORCHVISION_MINOR.get(minor) if major == 2 else None
        vision = None if vision_minor is None else f"torchvision==0.{vision_minor}.{patch}"
        return Release(label=text, torch=f"torch=={text}", torchvision=vision)
    words = text.split()
    torch = [word for word in words if re.match(r"^torch\b(?!vision)", word)]
    if len(torch) != 1:
        raise ValueError(
            f"{text!r}: give a torch version (2.15.0) or requirement strings with one torch "
            'requirement ("torch==2.14.1 torchvision==0.29.1")'
        )
    visions = [word for word in words if word.startswith("torchvision")]
    return Release(label=text, torch=torch[0], torchvision=visions[0] if visions else None)


def pinned_version(requirement: str) -> str | None:
    """The version ``torch==X`` pins, or None for any other requirement."""
    match = re.match(r"^[A-Za-z0-9_.-]+==([0-9][^;\s]*)$", requirement.strip())
    return match.group(1) if match else None


def cap_of(constraints: str, package: str) -> str | None:
    """The ``package<=X`` or ``package<X`` line of a pip constraints file, if it has one."""
    for line in constraints.splitlines():
        match = re.match(rf"^\s*{re.escape(package)}\s*(<=?)\s*([0-9][\w.]*)", line)
        if match:
            return f"{package}{match.group(1)}{match.group(2)}"
    return None


def _key(version: str) -> tuple[int, ...]:
    """``"2.6"`` and ``"2.6.0+cu124"`` both as (2, 6, 0)."""
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def exceeds(version: str, cap: str) -> bool:
    """Whether ``version`` lies beyond a cap such as ``torch<=2.14.1`` (or ``<2.15``)."""
    match = re.match(r"^[A-Za-z0-9_.-]+(<=?)([0-9][\w.]*)$", cap)
    if match is None:
        return False
    operator, bound = match.groups()
    return _key(version) > _key(bound) if operator == "<=" else _key(version) >= _key(bound)


# What a run's environment line records of the machine that decides its cells (its GPUs, as the
# run was given them) and their outcomes (the driver).
MACHINE_FIELDS = ("gpus", "outer_cuda_visible_devices", "driver_version")


def why_not_reused(
    out: Path,
    saved: Path,
    torch: str,
    commit: str | None,
    arguments: Sequence[str],
    machine: Mapping[str, Any],
) -> str | None:
    """None where ``out`` can stand for the older release's run: a run of ``torch`` at
    ``commit`` (None: the tree has changes no commit names) that finished, run with
    ``arguments`` (``ckpt-matrix``'s words, from ``run`` on: another ``-k`` is other cells), on
    the same ``machine`` (``ckpt-matrix inventory --json``: GPUs and driver), its checkpoints
    still in ``saved``. Otherwise why it is made again."""
    if not out.is_file():
        return f"no {out} yet"
    if not (saved / "artifacts").is_dir():
        return f"its checkpoints are gone from {saved}"
    lines = out.read_text(encoding="utf-8").splitlines()
    try:
        environment, last = json.loads(lines[0]), json.loads(lines[-1])
    except (ValueError, IndexError):
        return f"{out} is not a results file"
    if not (isinstance(environment, dict) and isinstance(last, dict)):
        return f"{out} is not a results file"
    if last.get("kind") != "end" or "stopped" in last:
        return f"{out} is a run that did not finish"
    version = torch.split("==", 1)[-1]
    if str(environment.get("torch", "")).split("+", 1)[0] != version:
        return f"{out} is a run of torch {environment.get('torch')}, not {version}"
    if commit is None:
        return "the working tree has uncommitted changes"
    if environment.get("git_commit") != commit:
        return f"{out} was run at {environment.get('git_commit')}, this is {commit}"
    argv = environment.get("argv")
    if not (isinstance(argv, list) and argv[1:] == list(arguments)):
        return f"{out} was run with other options"
    for key in MACHINE_FIELDS:
        if environment.get(key) != machine.get(key):
            return f"{out} was run with another {key.replace('_', ' ')}"
    return None


# The release ladder (``nox -s ladder``): what each release saves, as the columns of its table.
# Each names the cells of scenarios/ladder/ladder.toml it holds; a release that cannot save a
# column's files has its cells left out of its run (``ladder_selection``), and the table says why.
LADDER_COLUMNS = (
    "weights zip",
    "weights legacy",
    "whole zip",
    "whole legacy",
    "train_state zip",
    "train_state legacy",
    "safetensors",
    "safetensors sharded",
    "dcp fsdp2x1",
    "dcp fsdp2x2",
)
# The oldest torch the ladder takes: the workers import FSDP2 and DTensor from their homes of 2.4
# on (harness/worker/fsdp2_api.py) and allow globals with add_safe_globals (2.4). And the first
# whose FSDP2 runs on the CPU: fully_shard came with 2.4, but until 2.7 its forward asks the CPU
# stream for record_event, which it lacks (pytorch#145935 added it). The ladder's FSDP2 ranks
# run on the CPU (gloo) on every runner, so that its table is the same everywhere.
OLDEST = "2.4.0"
FIRST_FSDP2_ON_CPU = "2.7.0"


def ladder_column(
    file_format: str, serialization: str, recipe: str, save_layout: str, save_world: int
) -> str:
    """The ladder table's column of a cell: its file format, how torch.save wrote it (zip or
    legacy), a sharded safetensors checkpoint apart, DCP by the FSDP2 world size that saved it."""
    if file_format in ("weights", "whole", "train_state"):
        return f"{file_format} {serialization or 'zip'}"
    if file_format == "safetensors":
        return "safetensors sharded" if recipe.startswith("safetensors_index") else "safetensors"
    if file_format == "dcp":
        return f"dcp {save_layout}x{save_world}"
    return file_format


def ladder_unsupported(version: str) -> dict[str, str]:
    """The ladder's columns a torch release cannot save, each with why. Raises ValueError for a
    version it cannot read, or a release older than the ladder takes."""
    if not re.match(r"^\d+\.\d+", version):
        raise ValueError(f"torch {version!r}: not a release version such as 2.6.0")
    if _key(version) < _key(OLDEST):
        raise ValueError(
            f"torch {version}: the ladder takes torch {OLDEST} or newer (the workers need "
            "FSDP2's and add_safe_globals's homes of 2.4); give newer releases"
        )
    if _key(version) < _key(FIRST_FSDP2_ON_CPU):
        why = (
            f"torch {version}'s FSDP2 does not run on the CPU (record_event on the CPU stream "
            f"came with {FIRST_FSDP2_ON_CPU}, pytorch#145935)"
        )
        return {column: why for column in LADDER_COLUMNS if column.startswith("dcp ")}
    return {}


def ladder_selection(version: str) -> str | None:
    """The ``run -k`` expression that leaves out the cells ``version`` cannot save, or None."""
    if any(column.startswith("dcp ") for column in ladder_unsupported(version)):
        return "not fmt=dcp"
    return None


def ladder_plan(releases: list[str]) -> tuple[list[Release], Release]:
    """The ladder's releases, oldest to newest: each older one saves, the last loads. Each is a
    version (``2.6.0``) or ``torch==2.6.0``, and is installed alone, its label the version: the
    ladder's models are the zoo's own (its resnet18 is written with torch.nn alone). Raises
    ValueError for fewer than two, one not pinned to a version, one given twice, releases out of
    order, or one older than the ladder takes."""
    if len(releases) < 2:
        raise ValueError(
            "give two or more releases, the newest last: nox -s ladder -- 2.4.1 2.6.0 2.15.0"
        )
    versions = []
    for text in releases:
        version = pinned_version(release(text).torch)
        if version is None or not _VERSION.match(version.split("+")[0]):
            raise ValueError(
                f"{text!r}: the ladder needs each release pinned to one version (2.6.0 or "
                "torch==2.6.0): its table and its corpus are named by it"
            )
        ladder_unsupported(version)
        versions.append(version)
    twice = sorted({version for version in versions if versions.count(version) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)}: given twice; give each release once")
    for before, after in itertools.pairwise(versions):
        if _key(after) <= _key(before):
            raise ValueError(
                f"{after} is given after {before}: give the releases oldest first, the one "
                "that loads them last"
            )
    chosen = [Release(label=v, torch=f"torch=={v}", torchvision=None) for v in versions]
    return chosen[:-1], chosen[-1]
