"""torch.distributed.checkpoint directories: ``.metadata`` (a plain pickle of ``Metadata``:
every entry's dtype and size, and which shard file holds which bytes) and the shard files.

How each tensor was split is read from its chunks (``TensorStorageMetadata.chunks``: each
chunk's offsets and sizes): "2 chunks along dim 0", "2x2 (dim 0 in 2, dim 1 in 2)", "whole (one
chunk)". DCP records no placements and no mesh: ``Shard(0)`` over 4 ranks and
``[Shard(0), Shard(0)]`` over a 2x2 mesh leave the same chunks, and a replicated tensor is saved
once, whole.

``.metadata`` is read inertly (:mod:`harness.inspect.pickles`): ``dcp.load`` unpickles it with
``pickle.load``, so a global it names that DCP never writes is listed as refused."""

from __future__ import annotations

import io
import itertools
import math
import re
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
SHARD_FILE = re.compile(r"__(\d+)_(\d+)\.distcp")  # __RANK_THREAD.distcp: one per saving rank
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


Chunk = tuple[tuple[int, ...], tuple[int, ...]]  # offsets, sizes


def _chunks(value: Any, rank: int) -> list[Chunk] | None:
    """``ChunkStorageMetadata`` stand-ins as (offsets, sizes); None where one cannot be read."""
    if not isinstance(value, list | tuple):
        return None
    found = []
    for chunk in value:
        fields = state_of(chunk)
        offsets, sizes = _shape(fields.get("offsets")), _shape(fields.get("sizes"))
        if offsets is None or sizes is None or not len(offsets) == len(sizes) == rank:
            return None
        found.append((offsets, sizes))
    return found


def split_of(shape: tuple[int, ...], chunks: list[Chunk]) -> str:
    """How the chunks split a tensor of ``shape``: whole, along one dimension, as a grid over
    several, or (hand-made metadata; DCP's save checks that its chunks tile the tensor) chunks
    that do not tile it."""
    if chunks == [((0,) * len(shape), shape)]:
        return "whole (one chunk)"
    # each dimension's distinct spans (offset, size), in order
    spans = [sorted({(at[d], n[d]) for at, n in chunks}) for d in range(len(shape))]
    split = [d for d, found in enumerate(spans) if len(found) > 1]
    tiled = all(
        found[0][0] == 0
        and found[-1][0] + found[-1][1] == shape[d]
        and all(a + n == b for (a, n), (b, _) in itertools.pairwise(found))
        for d, found in enumerate(spans)
    )
    grid = math.prod(len(spans[d]) for d in split)
    if not split or not tiled or grid != len(chunks) or len(set(chunks)) != len(chunks):
        covered = sum(math.prod(sizes) for _, sizes in chunks)
        count = "1 chunk that does" if len(chunks) == 1 else f"{len(chunks)} chunks that do"
        return (
            f"{count} not tile the tensor ({covered} elements in the chunks, "
            f"{math.prod(shape)} in the tensor)"
        )

    def along(d: int) -> str:
        sizes = [n for _, n in spans[d]]
        return "" if len(set(sizes)) == 1 else f" of unequal size ({'+'.join(map(str, sizes))})"

    if len(split) == 1:
        return f"{len(chunks)} chunks along dim {split[0]}{along(split[0])}"
    dims = ", ".join(f"dim {d} in {len(spans[d])}{along(d)}" for d in split)
    return f"{'x'.join(str(len(spans[d])) for d in split)} ({dims})"


class DcpReader:
    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.DCP)
        where = str(path / METADATA)
        if not (path / METADATA).is_file():
            contents.format = FileFormat.UNKNOWN
            return contents.defect(
                DefectKind.UNKNOWN_FORMAT,
                str(path),
                f"a directory without {METADATA}: not a torch.distributed.checkpoint (nor a "
                "sharded safetensors checkpoint: no *.safetensors.index.json)",
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
                chunks = None if shape is None else _chunks(fields.get("chunks"), len(shape))
                contents.tensors.append(
                    TensorEntry(
                        path=str(fqn),
                        dtype=dtype,
                        shape=shape or (),
                        bytes=math.prod(shape) * element if shape is not None and element else None,
                        location="sharded",
                        storage=", ".join(shards),
                        split=split_of(shape, chunks) if shape is not None and chunks else None,
                    )
                )
            else:
                contents.others.append(
                    OtherEntry(path=str(fqn), type="bytes (a pickled object dcp.load unpickles)")
                )
        self._check_shards(path, files, contents)
        if any(tensor.split for tensor in contents.tensors):
            contents.notes.append(_ranks(files))
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


def _ranks(files: dict[str, dict[str, int]]) -> str:
    """What the shard files' names say of the save: DCP names each saving rank's file
    ``__RANK_THREAD.distcp``."""
    names = sorted({relative for shards in files.values() for relative in shards})
    ranks = sorted({int(m[1]) for name in names if (m := SHARD_FILE.fullmatch(name))})
    saved = ""
    if ranks:
        wrote = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}..{ranks[-1]}"
        saved = f": saved by at least {ranks[-1] + 1} rank(s) ({wrote} wrote data)"
    return (
        f"{len(names)} shard file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        f"{saved}; each tensor's split is inferred from its chunks: DCP does not record the "
        "placements or the mesh"
    )
