"""torch.distributed.checkpoint directories: ``.metadata`` (a plain pickle of ``Metadata``:
every entry's dtype and size, and which shard file holds which bytes) and the shard files.

``.metadata`` is read inertly (:mod:`harness.inspect.pickles`): ``dcp.load`` unpickles it with
``pickle.load``, so a global it names that DCP never writes is listed as refused."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from harness.inspect.pickles import Stub, globals_in, name_of, state_of, walker
from harness.inspect.reader import (
    ELEMENT_SIZES,
    Contents,
    DefectKind,
    FileFormat,
    OtherEntry,
    TensorEntry,
)

METADATA = ".metadata"
# What DCP's own .metadata names, as (module, name) pairs: its dataclasses, torch.Size, dtypes,
# a layout and a path. Matched exactly: a name with a dot would reach through attributes.
_DCP_GLOBALS = frozenset(
    {
        *(
            ("torch.distributed.checkpoint.metadata", name)
            for name in (
                "Metadata",
                "TensorStorageMetadata",
                "TensorProperties",
                "ChunkStorageMetadata",
                "BytesStorageMetadata",
                "MetadataIndex",
                "StorageMeta",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }
)


def dcp_global(module: str, name: str) -> bool:
    """A global DCP's own metadata names (a torch dtype is ``torch.<dtype>``)."""
    if (module, name) in _DCP_GLOBALS:
        return True
    return module == "torch" and name in ELEMENT_SIZES


def _dtype(properties: Any) -> str:
    state = properties.state if isinstance(properties, Stub) else None
    values = (
        state.values() if isinstance(state, dict) else state if isinstance(state, tuple) else ()
    )
    for value in values:
        name = name_of(value)
        if name is not None and name.startswith("torch.") and name[6:] in ELEMENT_SIZES:
            return name[6:]
    return "?"


def _shape(size: Any) -> tuple[int, ...] | None:
    if isinstance(size, Stub) and size.args and isinstance(size.args[0], list | tuple):
        return tuple(int(n) for n in size.args[0])
    return tuple(size) if isinstance(size, list | tuple) else None


class DcpReader:
    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.DCP)
        where = str(path / METADATA)
        if not (path / METADATA).is_file():
            contents.format = FileFormat.UNKNOWN
            return contents.defect(
                DefectKind.UNKNOWN_FORMAT,
                str(path),
                f"a directory without {METADATA}: not a torch.distributed.checkpoint",
            )
        data = (path / METADATA).read_bytes()
        try:
            unpickler = walker(io.BytesIO(data))
            root = unpickler.load()
        except Exception as exc:  # a broken pickle raises many types; none runs code
            contents.globals = globals_in(data)
            contents.refused = [
                name for name in contents.globals if not dcp_global(*name.rsplit(".", 1))
            ]
            return contents.defect(
                DefectKind.CORRUPT_METADATA,
                where,
                f"{len(data)} bytes that do not unpickle ({type(exc).__name__}: {exc})",
            )
        contents.globals = unpickler.met
        contents.refused = [f"{m}.{n}" for m, n in unpickler.pairs if not dcp_global(m, n)]
        state = state_of(root)
        if name_of(root) != "torch.distributed.checkpoint.metadata.Metadata" or not isinstance(
            state.get("state_dict_metadata"), dict
        ):
            return contents.defect(
                DefectKind.CORRUPT_METADATA,
                where,
                f"holds {name_of(root) or type(root).__name__}, not DCP's Metadata",
            )
        files = self._files(state.get("storage_data"))
        for fqn, entry in state["state_dict_metadata"].items():
            kind = name_of(entry) or type(entry).__name__
            shards = sorted(files.get(str(fqn), {}))
            if kind.endswith("TensorStorageMetadata"):
                fields = state_of(entry)
                dtype, shape = _dtype(fields.get("properties")), _shape(fields.get("size"))
                element = ELEMENT_SIZES.get(dtype, 0)
                contents.tensors.append(
                    TensorEntry(
                        path=str(fqn),
                        dtype=dtype,
                        shape=shape or (),
                        bytes=math.prod(shape) * element if shape is not None and element else None,
                        location="sharded",
                        storage=", ".join(shards),
                    )
                )
            else:
                contents.others.append(
                    OtherEntry(path=str(fqn), type="bytes (a pickled object dcp.load unpickles)")
                )
        self._check_shards(path, files, contents)
        return contents

    @staticmethod
    def _files(storage_data: Any) -> dict[str, dict[str, int]]:
        """For each entry, the shard files holding it and the end of its last byte in each."""
        files: dict[str, dict[str, int]] = {}
        for index, info in (storage_data or {}).items() if isinstance(storage_data, dict) else ():
            fqn = str(state_of(index).get("fqn", "?"))
            fields = state_of(info)
            relative = str(fields.get("relative_path", "?"))
            end = int(fields.get("offset", 0) or 0) + int(fields.get("length", 0) or 0)
            shard = files.setdefault(fqn, {})
            shard[relative] = max(shard.get(relative, 0), end)
        return files

    @staticmethod
    def _check_shards(path: Path, files: dict[str, dict[str, int]], contents: Contents) -> None:
        needed: dict[str, tuple[int, list[str]]] = {}
        for fqn, shards in files.items():
            for relative, end in shards.items():
                most, users = needed.get(relative, (0, []))
                needed[relative] = (max(most, end), [*users, fqn])
        for relative, (end, users) in sorted(needed.items()):
            shard = path / relative
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                contents.defect(
                    DefectKind.CORRUPT_METADATA,
                    str(path / METADATA),
                    f"names the shard {relative!r}, outside the checkpoint directory",
                )
                continue
            named = ", ".join(users[:4]) + (f" and {len(users) - 4} more" if len(users) > 4 else "")
            if not shard.is_file():
                contents.defect(
                    DefectKind.MISSING_SHARD, str(shard), f"the shard holding {named} is missing"
                )
            elif shard.stat().st_size < end:
                contents.defect(
                    DefectKind.SHORT_SHARD,
                    str(shard),
                    f"{shard.stat().st_size} bytes, but {named} reach byte {end}",
                )
