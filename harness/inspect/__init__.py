"""Checkpoint files the harness did not write: which format, what is inside, what is wrong,
and how to load them. Nothing here unpickles for real or imports a file's code.

``inspect_path`` picks the reader (:mod:`~harness.inspect.reader`'s ``Reader``) by the file's
first bytes: a zip archive (``torch.save`` and ``torch.jit.save``), a tar archive (``torch.save``
of torch <= 0.1.x), a pickle stream (legacy ``torch.save``), a safetensors header, a directory
with ``.metadata`` (DCP), or a sharded safetensors checkpoint (``save_pretrained``'s): its folder
with one ``*.safetensors.index.json`` and no ``.metadata``, or that index file itself.

May import: ``core`` (device names) alone; the readers serve the command line, golden files and
the workers alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.inspect.advice import PrefixFinding, prefixes, recommendations
from harness.inspect.dcp_dir import METADATA, DcpReader
from harness.inspect.legacy_tar import LegacyTarReader
from harness.inspect.legacy_tar import looks_like as looks_like_tar
from harness.inspect.pickles import runs_code
from harness.inspect.reader import (
    Contents,
    Defect,
    DefectKind,
    FileFormat,
    OtherEntry,
    Reader,
    TensorEntry,
)
from harness.inspect.safetensors_file import SafetensorsReader, looks_like
from harness.inspect.safetensors_index import ShardedSafetensorsReader, indexes_in, is_index
from harness.inspect.torchfile import LegacyReader, ZipReader, pickle_stream_start

INTACT, NEEDS_GLOBALS, BROKEN = 0, 1, 2

__all__ = [
    "BROKEN",
    "INTACT",
    "NEEDS_GLOBALS",
    "Contents",
    "Defect",
    "DefectKind",
    "FileFormat",
    "Inspection",
    "OtherEntry",
    "TensorEntry",
    "inspect_path",
    "read_contents",
]


def reader_for(path: Path) -> Reader | Defect:
    """The reader for ``path`` by its first bytes, or the defect that leaves none."""
    if path.is_dir():
        if not (path / METADATA).exists() and indexes_in(path):
            return ShardedSafetensorsReader()
        return DcpReader()
    if is_index(path):
        return ShardedSafetensorsReader()
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        return Defect(kind=DefectKind.UNREADABLE, where=str(path), message=str(exc.strerror))
    if not head:
        return Defect(kind=DefectKind.EMPTY, where=str(path), message="0 bytes")
    if head.startswith(b"PK\x03\x04"):
        return ZipReader()
    if looks_like_tar(head):
        return LegacyTarReader()
    if pickle_stream_start(head):
        return LegacyReader()
    if looks_like(head):
        return SafetensorsReader()
    return Defect(
        kind=DefectKind.UNKNOWN_FORMAT,
        where=str(path),
        message=f"{path.stat().st_size} bytes starting {head[:8].hex(' ')}: not a torch.save "
        "zip or pickle, a TorchScript archive, safetensors (or its *.safetensors.index.json), "
        "or a DCP directory",
    )


def read_contents(path: Path) -> Contents:
    """What the file holds and what is wrong with it; never raises for a bad file."""
    reader = reader_for(path)
    if isinstance(reader, Defect):
        return Contents(format=FileFormat.UNKNOWN, defects=[reader])
    try:
        return reader.read(path)
    except OSError as exc:
        return Contents(format=FileFormat.UNKNOWN).defect(
            DefectKind.UNREADABLE, str(path), str(exc)
        )
    except Exception as exc:  # a hostile file the reader could not finish: a defect, never a crash
        kind = {
            SafetensorsReader: DefectKind.BAD_HEADER,
            ShardedSafetensorsReader: DefectKind.BAD_INDEX,
            DcpReader: DefectKind.CORRUPT_METADATA,
        }.get(type(reader), DefectKind.CORRUPT_PICKLE)
        return Contents(format=FileFormat.UNKNOWN).defect(
            kind,
            str(path),
            f"the file could not be read to its end ({type(exc).__name__}: {str(exc)[:200]})",
        )


@dataclass
class Inspection:
    path: Path
    contents: Contents
    gpus: int  # this machine's, for the map_location advice
    prefixes: list[PrefixFinding] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def code_running(self) -> list[str]:
        """Every global the file names that runs code, whatever its format claims."""
        return [name for name in self.contents.globals if runs_code(name)]

    @property
    def exit_code(self) -> int:
        """0 intact and loadable with weights_only=True (or by its own loader: safetensors,
        torch.jit.load, dcp.load); 1 intact but such a load refuses it (globals it does not
        allow, opcodes it does not read); 2 broken, unreadable or unknown."""
        if self.contents.defects or self.contents.format is FileFormat.UNKNOWN:
            return BROKEN
        refused = self.contents.refused or self.contents.unreadable
        return NEEDS_GLOBALS if refused or self.code_running else INTACT

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exit_code": self.exit_code,
            **self.contents.to_json(),
            "code_running": self.code_running,
            "prefixes": [finding.to_json() for finding in self.prefixes],
            "recommendations": self.advice,
        }

    def describe(self) -> str:
        contents = self.contents
        lines = [f"{self.path}: {contents.format}"]
        total = sum(tensor.bytes or 0 for tensor in contents.tensors)
        if contents.tensors:
            lines.append(f"\n{len(contents.tensors)} tensors, {total:,} bytes:")
            width = max(len(tensor.path) for tensor in contents.tensors)
            sharded = contents.format is FileFormat.SAFETENSORS_SHARDED
            for tensor in contents.tensors:
                shape = "x".join(map(str, tensor.shape)) or "scalar"
                size = "?" if tensor.bytes is None else f"{tensor.bytes:,}"
                # a sharded folder's tensors all say "none": the shard holding each says more
                where = tensor.storage if sharded else tensor.location
                split = f": {tensor.split}" if tensor.split else ""
                lines.append(
                    f"  {tensor.path:<{width}}  {tensor.dtype:<9} {shape:<16} {size:>14} B  "
                    f"{where}{split}"
                )
        if contents.others:
            lines.append(f"\n{len(contents.others)} other entries:")
            for other in contents.others:
                value = f" = {other.value}" if other.value else ""
                lines.append(f"  {other.path}: {other.type}{value}")
        if contents.globals:
            lines.append(f"\nglobals named: {', '.join(contents.globals)}")
        if contents.refused:
            lines.append(f"refused by a weights_only load: {', '.join(contents.refused)}")
        if contents.unreadable:
            lines.append(f"refused by a weights_only load: {contents.unreadable}")
        for name in self.code_running:
            lines.append(f"\n!!! DANGER: {name} runs code or commands when unpickled !!!")
        for finding in self.prefixes:
            lines.append(f"\nprefix {finding.prefix!r} ({finding.verdict}): {finding.message}")
        for note in contents.notes:
            lines.append(f"\nnote: {note}")
        for defect in contents.defects:
            lines.append(f"\nerror: {defect.describe()}")
        for advice in self.advice:
            lines.append(f"\nrecommended: {advice}")
        verdicts = {
            INTACT: "intact",
            NEEDS_GLOBALS: "intact, but a weights_only load refuses it (exit 1)",
            BROKEN: "broken or unknown (exit 2)",
        }
        lines.append(f"\n{self.path}: {verdicts[self.exit_code]}")
        return "\n".join(lines)


def inspect_path(path: Path, *, gpus: int = 0) -> Inspection:
    contents = read_contents(path)
    return Inspection(
        path=path,
        contents=contents,
        gpus=gpus,
        prefixes=prefixes(contents),
        advice=recommendations(contents, gpus),
    )
