"""``torch.save`` as torch <= 0.1.x wrote it: a tar archive of four parts, read as torch's
``_legacy_load`` reads it (its ``legacy_load``), without unpickling anything for real.

- ``storages``: a pickled count, then per storage a pickled ``(key, location, storage_type)``,
  an 8-byte element count and the bytes; then a pickled list of views ``(key, root key,
  offset, size)``;
- ``tensors``: a pickled count, then per tensor a pickled ``(key, storage key, tensor_type)``,
  ``ndim`` (4 bytes, 4 of padding), the sizes and strides (8 bytes each) and the offset;
- ``pickle``: the object, whose persistent ids are tensor keys (``str(key)``), or a module's
  ``(class, source file, source)``;
- ``sys_info``: sizes and byte order, not needed here.

``torch.load(weights_only=True)`` refuses the format outright, so such a file is never exit 0.
"""

from __future__ import annotations

import io
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.inspect.pickles import PersistentRef, Stub, name_of, stub_class
from harness.inspect.reader import Contents, DefectKind, FileFormat
from harness.inspect.torchfile import (
    PICKLE_LIMIT,
    Storage,
    Walked,
    _take,
    _walk_pickle,
    refused_by_weights_only,
)

PARTS = ("storages", "tensors", "pickle")
_REBUILD = stub_class("torch._utils", "_rebuild_tensor")


def looks_like(head: bytes) -> bool:
    """A POSIX tar header (``ustar`` at byte 257) holding one of torch's parts first."""
    return len(head) >= 262 and head[257:262] == b"ustar"


@dataclass(frozen=True)
class _Tensor:
    storage: Storage
    offset: int
    shape: tuple[int, ...]


class Broken(ValueError):
    """A part that does not read as torch wrote it: (part, message, defect kind)."""

    def __init__(self, part: str, message: str, kind: DefectKind = DefectKind.CORRUPT_PICKLE):
        super().__init__(part, message)
        self.part, self.message, self.kind = part, message, kind

    def recorded(self, contents: Contents, where: str) -> Contents:
        """This break as a defect of the part it is in."""
        return contents.defect(self.kind, f"{where}:{self.part}", self.message)


class LegacyTarReader:
    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.LEGACY_TAR)
        where = str(path)
        try:
            with tarfile.open(path, mode="r:") as archive:
                names = set(archive.getnames())
                missing = [part for part in PARTS if part not in names]
                if missing and not _ends_whole(path):
                    return contents.defect(
                        DefectKind.TRUNCATED,
                        where,
                        f"the tar ends early, without its end blocks, before {', '.join(missing)}",
                    )
                if missing:
                    kind = DefectKind.MISSING_RECORD if "pickle" in names else None
                    if kind is None:
                        contents.format = FileFormat.UNKNOWN
                    return contents.defect(
                        kind or DefectKind.UNKNOWN_FORMAT,
                        where,
                        f"a tar archive without {', '.join(missing)}"
                        + ("" if kind else ": not one torch <= 0.1 wrote"),
                    )
                data = {part: _member(archive, part) for part in PARTS}
        except (tarfile.TarError, EOFError) as exc:
            return contents.defect(DefectKind.TRUNCATED, where, f"the tar ends early: {exc}")
        met: list[str] = []
        try:
            storages = _storages(io.BytesIO(data["storages"]), met)
            tensors = _tensors(io.BytesIO(data["tensors"]), storages, met)
        except Broken as exc:
            return exc.recorded(contents, where)
        except Exception as exc:  # a broken pickle raises many types; none runs code
            return contents.defect(DefectKind.CORRUPT_PICKLE, where, f"{type(exc).__name__}: {exc}")

        def persistent(pid: Any) -> Any:
            if isinstance(pid, tuple):  # a module class pickled with its source
                return pid[0] if pid else None
            tensor = tensors.get(str(pid))
            if tensor is None:
                raise Broken("pickle", f"names tensor {pid}, which the tensors part lacks")
            storage = tensor.storage
            ref = PersistentRef(
                ident=("storage", _kind_of(storage), storage.key, storage.location, storage.numel)
            )
            return _REBUILD(ref, tensor.offset, tensor.shape)

        try:
            walked = _walk_pickle(io.BytesIO(data["pickle"]), persistent=persistent)
        except Broken as exc:
            return exc.recorded(contents, where)
        except Exception as exc:
            return contents.defect(
                DefectKind.CORRUPT_PICKLE, f"{where}:pickle", f"{type(exc).__name__}: {exc}"
            )
        object_globals = walked.met
        walked = Walked(
            root=walked.root,
            met=list(dict.fromkeys([*met, *object_globals])),
            storages={key: s for key, s in storages.items() if key == s.key},  # roots
            encoding=walked.encoding,
            opcodes=walked.opcodes,
        )
        _take(contents, walked, where=f"{where}:pickle")
        # the object's own globals: what a converted file would still need allowed
        contents.refused = refused_by_weights_only(path, object_globals, zipped=False)
        return contents


def _ends_whole(path: Path) -> bool:
    """Whether the tar ends as tar archives end: with (at least) two zeroed 512-byte blocks."""
    size = path.stat().st_size
    if size < 1024 or size % 512:
        return False
    with open(path, "rb") as handle:
        handle.seek(size - 1024)
        return handle.read(1024) == bytes(1024)


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    info = archive.getmember(name)
    if info.size > PICKLE_LIMIT * 64:
        raise tarfile.TarError(f"{name}: {info.size} bytes, more than this reader reads")
    handle = archive.extractfile(info)
    if handle is None:
        raise tarfile.TarError(f"{name} is not a regular file")
    with handle:
        data = handle.read()
    if len(data) < info.size:
        raise EOFError(f"{name}: {len(data)} of {info.size} bytes")
    return data


def _pickled(data: IO[bytes], met: list[str]) -> Any:
    walked = _walk_pickle(data)
    met.extend(walked.met)
    return walked.root


def _exact(data: IO[bytes], size: int, part: str, what: str) -> bytes:
    chunk = data.read(size)
    if len(chunk) < size:
        raise Broken(
            part, f"cut short in {what}: {len(chunk)} of {size} bytes", DefectKind.TRUNCATED
        )
    return chunk


def _storages(data: IO[bytes], met: list[str]) -> dict[str, Storage]:
    """Each storage (views too) by its key, with its dtype, location and size; the bytes are
    skipped, checked only to be there."""
    found: dict[str, Storage] = {}
    count = _pickled(data, met)
    for _ in range(count if isinstance(count, int) else 0):
        header = _pickled(data, met)
        if not (isinstance(header, tuple) and len(header) == 3):
            raise Broken("storages", f"a storage header {header!r}, not (key, location, type)")
        key, location, kind = header
        numel = int.from_bytes(_exact(data, 8, "storages", f"storage {key}"), "little", signed=True)
        storage = Storage(("storage", kind, key, location, numel))
        if not storage.element_size:
            raise Broken("storages", f"storage {key} of unknown type {name_of(kind)}")
        _exact(data, numel * storage.element_size, "storages", f"storage {key}")
        found[str(key)] = storage
    views = _pickled(data, met)
    for view in views if isinstance(views, list) else []:
        target, root, _offset, size = view
        base = found.get(str(root))
        if base is None:
            raise Broken("storages", f"view {target} of storage {root}, which is not there")
        found[str(target)] = Storage(("storage", _kind_of(base), base.key, base.location, size))
    return found


def _kind_of(storage: Storage) -> type[Stub]:
    return stub_class("torch", storage.type)


def _tensors(data: IO[bytes], storages: dict[str, Storage], met: list[str]) -> dict[str, _Tensor]:
    found: dict[str, _Tensor] = {}
    count = _pickled(data, met)
    for _ in range(count if isinstance(count, int) else 0):
        header = _pickled(data, met)
        if not (isinstance(header, tuple) and len(header) == 3):
            raise Broken("tensors", f"a tensor header {header!r}, not (key, storage, type)")
        key, storage_key, _kind = header
        storage = storages.get(str(storage_key))
        if storage is None:
            raise Broken("tensors", f"tensor {key} uses storage {storage_key}, which is not there")
        (ndim,) = struct.unpack("<i", _exact(data, 4, "tensors", f"tensor {key}"))
        _exact(data, 4, "tensors", f"tensor {key}")  # torch wrote ndim as 8 bytes
        if not 0 <= ndim <= 64:
            raise Broken("tensors", f"tensor {key} has {ndim} dimensions")
        shape = struct.unpack(f"<{ndim}q", _exact(data, 8 * ndim, "tensors", f"tensor {key}"))
        _exact(data, 8 * ndim, "tensors", f"tensor {key}")  # strides
        (offset,) = struct.unpack("<q", _exact(data, 8, "tensors", f"tensor {key}"))
        found[str(key)] = _Tensor(storage=storage, offset=offset, shape=tuple(shape))
    return found
