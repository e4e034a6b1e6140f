"""Checkpoint files of every kind the harness reads, good and broken, written by the tests.

``GOOD`` writes one file (or DCP directory) per format; ``BAD`` writes one broken or hostile
input per defect, each with the defect ``harness.inspect`` must name. A hostile file's payload
would create ``marker`` if it ever ran.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.inspect import DefectKind


class Payload:
    """Pickles as ``os.system(command)``: what a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def state() -> dict[str, torch.Tensor]:
    return model().state_dict()


def quiet(action: Callable[[], object]) -> None:
    """DCP without a process group and TorchScript both warn; the files are what matter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        action()


def zip_file(folder: Path) -> Path:
    path = folder / "weights.pt"
    torch.save(state(), path)
    return path


def legacy_file(folder: Path) -> Path:
    path = folder / "legacy.pt"
    torch.save(state(), path, _use_new_zipfile_serialization=False)
    return path


def train_state_file(folder: Path) -> Path:
    """A training checkpoint: nested tensors, plain values and an argparse.Namespace."""
    net = model()
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    path = folder / "train.pt"
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 3,
            "args": argparse.Namespace(lr=0.1),
        },
        path,
    )
    return path


def dp_file(folder: Path) -> Path:
    """Keys prefixed ``module.`` as nn.DataParallel saves them."""
    path = folder / "dp.pt"
    torch.save({f"module.{k}": v for k, v in state().items()}, path)
    return path


def torchscript_file(folder: Path) -> Path:
    path = folder / "scripted.pt"
    quiet(lambda: torch.jit.save(torch.jit.script(model()), str(path)))
    return path


def safetensors_file(folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / "weights.safetensors"
    save_file(state(), str(path))
    return path


def dcp_dir(folder: Path) -> Path:
    from torch.distributed.checkpoint.state_dict_saver import save

    path = folder / "checkpoint.dcp"
    quiet(lambda: save({"model": state(), "step": 5}, checkpoint_id=str(path), no_dist=True))
    return path


GOOD: dict[str, Callable[[Path], Path]] = {
    "torch_zip": zip_file,
    "torch_legacy": legacy_file,
    "torchscript": torchscript_file,
    "safetensors": safetensors_file,
    "dcp": dcp_dir,
}


def record_offset(path: Path, name: str) -> int:
    """Where a zip record's bytes start: after its local header (whose extra field torch pads
    for alignment, unlike the central directory's)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    data = path.read_bytes()
    start = info.header_offset
    name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
    return int(start + 30 + name_length + extra_length)


def truncated(folder: Path) -> Path:
    path = zip_file(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def empty(folder: Path) -> Path:
    path = folder / "empty.pt"
    path.write_bytes(b"")
    return path


def random_bytes(folder: Path) -> Path:
    path = folder / "random.pt"
    path.write_bytes(bytes(range(7, 256)) * 8)
    return path


def flipped_byte(folder: Path) -> Path:
    path = zip_file(folder)
    data = bytearray(path.read_bytes())
    data[record_offset(path, "weights/data/0") + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def legacy_cut(folder: Path) -> Path:
    path = legacy_file(folder)
    path.write_bytes(path.read_bytes()[:-50])
    return path


def missing_record(folder: Path) -> Path:
    source = zip_file(folder)
    path = folder / "missing.pt"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            if info.filename != "weights/data/2":
                new.writestr(info, old.read(info))
    source.unlink()
    return path


def lying_header(folder: Path) -> Path:
    path = safetensors_file(folder)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + length].replace(b'"shape":[4,3]', b'"shape":[5,3]')
    assert header != data[8 : 8 + length]
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + length :])
    return path


def missing_shard(folder: Path) -> Path:
    path = dcp_dir(folder)
    for shard in path.glob("*.distcp"):
        shard.unlink()
    return path


def corrupt_metadata(folder: Path) -> Path:
    path = dcp_dir(folder)
    metadata = path / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:40])
    return path


def hostile(marker: Path) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "hostile.pt"
        torch.save({"weight": torch.ones(2), "payload": Payload(marker)}, path)
        return path

    return write


def hostile_legacy(marker: Path) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "hostile-legacy.pt"
        torch.save(
            {"weight": torch.ones(2), "payload": Payload(marker)},
            path,
            _use_new_zipfile_serialization=False,
        )
        return path

    return write


def hostile_metadata(marker: Path) -> Callable[[Path], Path]:
    """A DCP directory whose .metadata would run the payload under dcp.load's pickle.load."""

    def write(folder: Path) -> Path:
        path = dcp_dir(folder)
        (path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
        return path

    return write


def bad_inputs(marker: Path) -> dict[str, tuple[Callable[[Path], Path], DefectKind | None]]:
    """Each broken or hostile input, and the defect it must be named by (None: intact, but
    refused for a global that runs code)."""
    return {
        "truncated": (truncated, DefectKind.TRUNCATED),
        "empty": (empty, DefectKind.EMPTY),
        "random bytes": (random_bytes, DefectKind.UNKNOWN_FORMAT),
        "flipped byte": (flipped_byte, DefectKind.CRC_MISMATCH),
        "legacy cut short": (legacy_cut, DefectKind.TRUNCATED),
        "zip record missing": (missing_record, DefectKind.MISSING_RECORD),
        "safetensors lying header": (lying_header, DefectKind.BAD_HEADER),
        "dcp missing shard": (missing_shard, DefectKind.MISSING_SHARD),
        "dcp corrupt metadata": (corrupt_metadata, DefectKind.CORRUPT_METADATA),
        "hostile zip pickle": (hostile(marker), None),
        "hostile legacy pickle": (hostile_legacy(marker), None),
        "hostile dcp metadata": (hostile_metadata(marker), DefectKind.CORRUPT_METADATA),
    }


def fresh(folder: Path, name: str) -> Path:
    """A new empty folder for one file's maker (makers name their files alike)."""
    target = folder / name.replace(" ", "-")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target
