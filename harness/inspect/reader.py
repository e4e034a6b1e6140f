"""What every format's reader finds in a checkpoint file: its tensors, its other entries, the
globals its pickles name, and its defects; and the ``Reader`` protocol they share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

# Bytes per element of each dtype the readers name (torch's names, without ``torch.``).
ELEMENT_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "complex128": 16,
    "complex64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
}


class FileFormat(StrEnum):
    ZIP = "torch_zip"  # torch.save, torch >= 1.6
    LEGACY = "torch_legacy"  # torch.save, torch <= 1.5 or _use_new_zipfile_serialization=False
    LEGACY_TAR = "torch_legacy_tar"  # torch.save, torch <= 0.1.x: a tar of four pickled parts
    TORCHSCRIPT = "torchscript"  # torch.jit.save
    SAFETENSORS = "safetensors"
    # save_pretrained's sharded folder: *.safetensors.index.json and the shards it names
    SAFETENSORS_SHARDED = "safetensors_sharded"
    DCP = "dcp"  # a torch.distributed.checkpoint directory: .metadata and shards
    UNKNOWN = "unknown"

    @property
    def pickled(self) -> bool:
        """Loaded through a pickle (``torch.load``): the globals it names matter."""
        return self in (FileFormat.ZIP, FileFormat.LEGACY, FileFormat.LEGACY_TAR)


class DefectKind(StrEnum):
    """Each way a file can be broken, with the fix a person can apply."""

    UNREADABLE = "unreadable"  # the OS refused to read it
    EMPTY = "empty"
    UNKNOWN_FORMAT = "unknown_format"  # none of the formats this tool reads
    TRUNCATED = "truncated"  # cut short: a copy or download that stopped early
    CRC_MISMATCH = "crc_mismatch"  # a zip record whose bytes changed after the save
    MISSING_RECORD = "missing_record"  # a storage the pickle names is not in the archive
    SHORT_RECORD = "short_record"  # a record smaller than the tensors stored in it
    CORRUPT_PICKLE = "corrupt_pickle"  # the pickle itself cannot be read
    BAD_HEADER = "bad_header"  # a safetensors header that does not match the file
    MISSING_SHARD = "missing_shard"  # a shard file named by DCP's .metadata or an index is absent
    SHORT_SHARD = "short_shard"  # a DCP shard smaller than the entries .metadata puts in it
    CORRUPT_METADATA = "corrupt_metadata"  # DCP's .metadata cannot be read
    UNLISTED_STORAGE = "unlisted_storage"  # tensor bytes that no entry listed accounts for
    BAD_INDEX = "bad_index"  # a safetensors index that is not JSON or has no weight_map
    STALE_INDEX = "stale_index"  # the index puts a tensor in a shard that does not hold it
    UNINDEXED_TENSOR = "unindexed_tensor"  # a shard holds a tensor the index does not name

    @property
    def fix(self) -> str:
        return _FIXES[self]


_FIXES = {
    DefectKind.UNREADABLE: "check the path and its permissions",
    DefectKind.EMPTY: "the file has no bytes: copy or download it again",
    DefectKind.UNKNOWN_FORMAT: "give a file written by torch.save, torch.jit.save, "
    "safetensors or a torch.distributed.checkpoint directory",
    DefectKind.TRUNCATED: "the file was cut short (a copy or download that stopped): copy it "
    "again from its source",
    DefectKind.CRC_MISMATCH: "bytes changed after the save (disk, transfer or an edit): torch.load "
    "would load the changed tensor silently; restore the file from a good copy",
    DefectKind.MISSING_RECORD: "the archive lost a record: restore the file from a good copy",
    DefectKind.SHORT_RECORD: "a record is shorter than its tensors: restore the file from a good "
    "copy",
    DefectKind.CORRUPT_PICKLE: "the pickle inside is damaged: restore the file from a good copy",
    DefectKind.BAD_HEADER: "the safetensors header does not describe the file: restore it from "
    "a good copy or write it again with safetensors",
    DefectKind.MISSING_SHARD: "copy the whole checkpoint directory: every shard file with the "
    ".metadata or index that names it",
    DefectKind.SHORT_SHARD: "a shard was cut short: copy the directory again",
    DefectKind.CORRUPT_METADATA: "the directory's .metadata is damaged: restore it from a good "
    "copy (it cannot be rebuilt from the shards)",
    DefectKind.UNLISTED_STORAGE: "the pickle builds these tensors in a way this reader does not "
    "follow, so what it lists is incomplete: list them with torch.load(path, weights_only=True, "
    "map_location='cpu') and report the file's globals to ckpt-matrix",
    DefectKind.BAD_INDEX: "the index is damaged: restore it from a good copy, or write the "
    "checkpoint again with save_pretrained",
    DefectKind.STALE_INDEX: "the index and the shards come from different saves: copy the index "
    "with the shards it was written with, or rebuild its weight_map from the shards' headers "
    "(each shard lists the tensors it holds)",
    DefectKind.UNINDEXED_TENSOR: "a loader that follows the index never loads these tensors: "
    "copy the index written with the shards, or rebuild its weight_map from the shards' headers",
}


@dataclass(frozen=True, kw_only=True)
class Defect:
    kind: DefectKind
    where: str  # the file, or the record or shard inside it
    message: str

    def describe(self) -> str:
        return f"{self.where}: {self.kind}: {self.message}; fix: {self.kind.fix}"

    def to_json(self) -> dict[str, str]:
        return {"kind": str(self.kind), "where": self.where, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    path: str  # nested, dotted: optimizer.state.0.exp_avg
    dtype: str
    shape: tuple[int, ...]
    bytes: int | None  # None where the dtype's size is unknown
    location: str  # where it was saved: cpu, cuda:1 (a DCP directory: the shard file)
    storage: str = ""  # the record or byte range that holds it (and the shard file, if sharded)
    # how a DCP directory's chunks split it ("2 chunks along dim 0", "whole"); None elsewhere
    split: str | None = None


@dataclass(frozen=True, kw_only=True)
class OtherEntry:
    path: str
    type: str  # int, str, argparse.Namespace, ...
    value: str = ""  # a short rendering of a plain value


@dataclass
class Contents:
    """What a reader found; the defects say what is wrong."""

    format: FileFormat
    tensors: list[TensorEntry] = field(default_factory=list)
    others: list[OtherEntry] = field(default_factory=list)
    globals: list[str] = field(default_factory=list)  # every global its pickles name
    refused: list[str] = field(default_factory=list)  # those a weights_only load refuses
    # pickle opcodes a weights_only load cannot read (BINSTRING: a Python 2 string over 255 bytes)
    unreadable_opcodes: list[str] = field(default_factory=list)
    encoding: str = ""  # what torch.load's encoding= must be, where its default fails
    groups: list[str] = field(default_factory=list)  # top-level keys that hold a mapping
    defects: list[Defect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def unreadable(self) -> str:
        """Why ``torch.load(weights_only=True)`` cannot read the file whatever globals it allows;
        empty where it can."""
        if self.format is FileFormat.LEGACY_TAR:
            return "the legacy .tar format of torch <= 0.1.x, which it refuses outright"
        if self.unreadable_opcodes and self.format.pickled:
            return (
                f"pickle opcode(s) {', '.join(self.unreadable_opcodes)}, which its unpickler "
                "does not read"
            )
        return ""

    def defect(self, kind: DefectKind, where: str, message: str) -> Contents:
        """Record what is wrong at ``where``; returns these contents, so a reader that can go no
        further says ``return contents.defect(...)``."""
        self.defects.append(Defect(kind=kind, where=where, message=message))
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = str(self.format)
        data["unreadable"] = self.unreadable
        data["defects"] = [defect.to_json() for defect in self.defects]
        return data


class Reader(Protocol):
    """One format's reader. ``read`` never raises for a bad file: what is wrong is a defect."""

    def read(self, path: Path) -> Contents: ...
