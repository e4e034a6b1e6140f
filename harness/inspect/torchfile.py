"""``torch.save`` files (the zip archive and the legacy pickle stream) and ``torch.jit.save``
archives, read without unpickling anything for real (:mod:`harness.inspect.pickles`)."""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import reprlib
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from harness.inspect.pickles import (
    TORCH_ENCODING,
    TORCHSCRIPT_GLOBALS,
    PersistentRef,
    Stub,
    children,
    name_of,
    walker,
)
from harness.inspect.reader import (
    ELEMENT_SIZES,
    Contents,
    DefectKind,
    FileFormat,
    OtherEntry,
    TensorEntry,
)

# The storage classes torch pickles, and the dtype each holds.
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
NODE_LIMIT = 1_000_000  # containers listed at most
PICKLE_LIMIT = 1 << 28  # 256 MiB: a data.pkl holds no tensor bytes; millions of entries fit
# Functions torch pickles a tensor as: the index of the storage argument.
_REBUILD_TENSOR = {
    "torch._utils._rebuild_tensor_v2": 0,
    "torch._utils._rebuild_tensor": 0,
    "torch._utils._rebuild_qtensor": 0,
}
_REBUILD_WRAPPING = {  # their first argument is the tensor
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
}
_MODULE_PARTS = ("_parameters", "_buffers", "_modules")
_SCRIPT_NOISE = frozenset({"training", "_is_full_backward_hook"})  # every TorchScript module's


class Storage:
    """A storage a pickle names by its persistent id: where its bytes are and where it was."""

    def __init__(self, ident: tuple[Any, ...]) -> None:
        self.ok = len(ident) >= 5 and ident[0] == "storage"
        kind = name_of(ident[1]) if self.ok else None
        self.type = (kind or "?").rsplit(".", 1)[-1]
        self.key = str(ident[2]) if self.ok else "?"
        self.location = str(ident[3]) if self.ok else "?"
        self.numel = ident[4] if self.ok and isinstance(ident[4], int) else 0
        self.dtype = STORAGE_DTYPES.get(self.type, f"? ({self.type})")
        self.element_size = ELEMENT_SIZES.get(self.dtype, 0)

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size


def _storage_of(value: Any) -> Storage | None:
    if isinstance(value, PersistentRef):
        return Storage(value.ident)
    return None


def _storages_in(value: Any, depth: int = 0) -> list[Storage]:
    """The storages named anywhere in a call's arguments (bounded: arguments are shallow)."""
    storage = _storage_of(value)
    if storage is not None:
        return [storage]
    if depth > 20:
        return []
    found: list[Storage] = []
    items = (
        value.args if isinstance(value, Stub) else value if isinstance(value, list | tuple) else ()
    )
    for item in items:
        found += _storages_in(item, depth + 1)
    return found


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def groups(root: Any) -> list[str]:
    """The top-level keys of a pickled dict whose values are mappings (``checkpoint["model"]``)."""
    items = root.items if isinstance(root, Stub) else root if isinstance(root, dict) else {}
    return [
        str(key)
        for key, value in items.items()
        if isinstance(value, dict) or name_of(value) == "collections.OrderedDict"
    ]


def entries(root: Any) -> tuple[list[TensorEntry], list[OtherEntry], list[Storage]]:
    """Every tensor in an inert pickle tree by its dotted path, the other entries by type, and
    the storages they account for (the tensors', and those of a tensor listed as an other entry
    because its layout is not read: sparse, nested...). An ``nn.Module`` pickled whole lists its
    parameters and buffers under their module names (``fc.weight``), not ``_parameters``."""
    tensors: list[TensorEntry] = []
    others: list[OtherEntry] = []
    storages: dict[str, Storage] = {}
    accounted: dict[str, Storage] = {}

    def tensor(path: str, storage: Storage, shape: tuple[int, ...]) -> None:
        storages.setdefault(storage.key, storage)
        numel = math.prod(shape)
        tensors.append(
            TensorEntry(
                path=path,
                dtype=storage.dtype,
                shape=shape,
                bytes=numel * storage.element_size if storage.element_size else None,
                location=storage.location,
                storage=storage.key,
            )
        )

    seen: dict[int, str] = {}  # containers already listed (a pickle may share one many times)

    def visit(path: str, value: Any, depth: int) -> None:
        if depth > 200:
            others.append(OtherEntry(path=path, type="(nested too deep to list)"))
            return
        if isinstance(value, dict | list | Stub):
            if id(value) in seen:
                others.append(OtherEntry(path=path, type=f"(the same object as {seen[id(value)]})"))
                return
            seen[id(value)] = path or "(root)"
            if len(seen) > NODE_LIMIT:
                raise ValueError(f"more than {NODE_LIMIT} containers: not listed further")
        storage = _storage_of(value)
        if storage is not None:
            tensor(path, storage, (storage.numel,))
            return
        name = name_of(value)
        if isinstance(value, Stub) and name is not None:
            if _visit_tensor(path, value, name, tensor, others, accounted):
                return
            state = value.state if isinstance(value.state, dict) else {}
            if any(part in state for part in _MODULE_PARTS):  # an nn.Module pickled whole
                others.append(OtherEntry(path=path or "(root)", type=name))
                for part in _MODULE_PARTS:
                    for key, item in children(state.get(part)):
                        visit(_join(path, key), item, depth + 1)
                return
            if name != "collections.OrderedDict":
                others.append(OtherEntry(path=path or "(root)", type=name))
        if name == "collections.OrderedDict" and isinstance(value, Stub):
            for key, item in value.items.items():  # its state is state_dict()'s _metadata
                visit(_join(path, str(key)), item, depth + 1)
            return
        if isinstance(value, dict | list | tuple | Stub):
            for key, item in children(value):
                if name is not None and name.startswith("__torch__.") and key in _SCRIPT_NOISE:
                    continue
                visit(_join(path, key), item, depth + 1)
            return
        if isinstance(value, type):
            others.append(OtherEntry(path=path or "(root)", type=name or "type"))
            return
        others.append(
            OtherEntry(path=path or "(root)", type=type(value).__name__, value=short(value))
        )

    visit("", root, 0)
    return tensors, others, [*storages.values(), *accounted.values()]


def short(value: Any) -> str:
    """A plain value for a listing, at most 80 characters (``reprlib`` bounds huge numbers and
    deep containers)."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"({type(value).__name__} not shown)"


_REPR = reprlib.Repr()  # Python 3.11's takes no arguments
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlevel = 3


def _visit_tensor(
    path: str,
    value: Stub,
    name: str,
    tensor: Callable[[str, Storage, tuple[int, ...]], None],
    others: list[OtherEntry],
    accounted: dict[str, Storage],
    depth: int = 0,
) -> bool:
    """Record ``value`` if it is a tensor torch pickled; False when it is not one."""
    if depth > 20:
        return False
    args = value.args
    if name == "torch._tensor._rebuild_from_type_v2" and len(args) >= 3:
        inner = name_of(args[0])
        if inner is not None and isinstance(args[2], tuple):
            rebuilt = type(args[0])(*args[2]) if isinstance(args[0], Stub) else args[0](*args[2])
            return _visit_tensor(path, rebuilt, inner, tensor, others, accounted, depth + 1)
    if name in _REBUILD_WRAPPING and args:
        inner_name = name_of(args[0])
        if isinstance(args[0], Stub) and inner_name is not None:
            return _visit_tensor(path, args[0], inner_name, tensor, others, accounted, depth + 1)
    if name in _REBUILD_TENSOR and len(args) >= 3:
        storage = _storage_of(args[_REBUILD_TENSOR[name]])
        shape = args[2]
        if (
            storage is not None
            and isinstance(shape, tuple | list)
            and all(type(size) is int for size in shape)
        ):
            tensor(path, storage, tuple(shape))
            return True
    if name.startswith("torch._utils._rebuild_") or name.startswith("torch._tensor._rebuild_"):
        others.append(OtherEntry(path=path, type=f"tensor not listed ({name})"))
        for storage in _storages_in(args):  # named as that entry's, not missed
            accounted[storage.key] = storage
        return True
    return False


@dataclass
class Walked:
    """One pickle walked inertly: its tree, the globals it named, every storage its persistent
    ids name (by key, whether or not a tensor listed uses it), the encoding its Python 2 strings
    needed, and the opcodes a ``weights_only`` load cannot read."""

    root: Any
    met: list[str]
    storages: dict[str, Storage]
    encoding: str
    opcodes: list[str]


def _walk_pickle(
    data: IO[bytes], persistent: Callable[[Any], Any] | None = None, *, legacy: bool = False
) -> Walked:
    """The next pickle in ``data``, its byte strings decoded as ``torch.load`` decodes them
    (UTF-8), or as Latin-1 where they are not UTF-8 (``torch.load(encoding='latin1')`` reads
    those; its default raises)."""
    start = data.tell()
    opcodes = sorted(unreadable_opcodes(data))
    try:
        return _walk_once(data, TORCH_ENCODING, opcodes, persistent, legacy=legacy)
    except UnicodeDecodeError:
        data.seek(start)
        return _walk_once(data, "latin1", opcodes, persistent, legacy=legacy)


def _walk_once(
    data: IO[bytes],
    encoding: str,
    opcodes: list[str],
    given: Callable[[Any], Any] | None,
    *,
    legacy: bool = False,
) -> Walked:
    """One walk; the storages its persistent ids name are collected, unless ``given`` answers
    them (the tar format's ids are tensor keys)."""
    storages: dict[str, Storage] = {}

    def persistent(pid: Any) -> Any:
        if legacy and isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module":
            # the legacy format's id of a module's class, ("module", class, source file,
            # source): a whole model's class, which NEWOBJ then calls (torch.load answers the
            # class, as here its stand-in; the zip format has no such id)
            return pid[1]
        ref = PersistentRef(ident=tuple(pid) if isinstance(pid, tuple) else (pid,))
        storage = Storage(ref.ident)
        if storage.ok:
            storages.setdefault(storage.key, storage)
        return ref

    unpickler = walker(data, encoding=encoding, persistent=given or persistent)
    root = unpickler.load()
    return Walked(
        root=root, met=unpickler.met, storages=storages, encoding=encoding, opcodes=opcodes
    )


def _take(contents: Contents, walked: Walked, *, where: str) -> None:
    """What a walked ``data.pkl`` (or a legacy file's object pickle) holds, into ``contents``;
    a storage its persistent ids name that no listed tensor uses is a defect: the file holds
    tensors this listing would leave out."""
    contents.globals = walked.met
    contents.tensors, contents.others, used = entries(walked.root)
    contents.groups = groups(walked.root)
    contents.unreadable_opcodes = walked.opcodes
    if walked.encoding != TORCH_ENCODING:
        contents.encoding = walked.encoding
        contents.notes.append(
            f"Python 2 byte strings that are not {TORCH_ENCODING.upper()}: torch.load raises "
            f"UnicodeDecodeError unless given encoding={walked.encoding!r}"
        )
    accounted = {storage.key for storage in used}
    unlisted = [storage for key, storage in walked.storages.items() if key not in accounted]
    if unlisted:
        size = sum(storage.nbytes for storage in unlisted)
        contents.defect(
            DefectKind.UNLISTED_STORAGE,
            where,
            f"{len(unlisted)} of its {len(walked.storages)} storage(s) ({size:,} bytes; keys "
            f"{', '.join(s.key for s in unlisted[:4])}{' ...' if len(unlisted) > 4 else ''}) "
            "belong to no tensor listed here",
        )


# The opcodes torch's weights-only unpickler reads (torch/_weights_only_unpickler.py); a pickle
# with another one is refused by ``torch.load(weights_only=True)`` ("Unsupported operand"),
# whatever globals it names: a Python 2 string over 255 bytes (``BINSTRING``), for one.
WEIGHTS_ONLY_OPCODES = frozenset(
    {
        "PROTO", "STOP", "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM",
        "SETITEMS", "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE",
        "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2",
        "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET", "LONG_BINGET",
        "BINPUT", "LONG_BINPUT", "LONG1",
    }
)  # fmt: skip


def unreadable_opcodes(data: IO[bytes]) -> set[str]:
    """The opcodes of the next pickle in ``data`` that a ``weights_only`` load cannot read;
    leaves ``data`` where it was (a pickle that breaks is the walk's to report)."""
    start = data.tell()
    found: set[str] = set()
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name not in WEIGHTS_ONLY_OPCODES:
                found.add(opcode.name)
    except (ValueError, EOFError, pickle.UnpicklingError):
        pass
    data.seek(start)
    return found


def refused_by_weights_only(path: Path, met: list[str], *, zipped: bool) -> list[str]:
    """The globals a ``weights_only=True`` load of this file refuses: torch's own
    ``get_unsafe_globals_in_checkpoint`` for a zip archive; otherwise (a legacy file, or a zip
    that function cannot read) the globals met that torch's weights-only allowlist lacks (the
    list that function consults)."""
    import torch

    if zipped:
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # its own static reading failed; the inert walk's list still holds
            pass
    return sorted(name for name in met if name not in weights_only_allowed())


def weights_only_allowed() -> set[str]:
    from torch import _weights_only_unpickler as allow

    return set(allow._get_allowed_globals()) | set(allow._get_user_allowed_globals())  # type: ignore[no-untyped-call]


class ZipReader:
    """``torch.save`` >= 1.6 and ``torch.jit.save``: a zip archive of ``data.pkl`` and one
    record per storage."""

    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.ZIP)
        where = str(path)
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            return contents.defect(
                DefectKind.TRUNCATED,
                where,
                f"a zip archive whose central directory is missing or damaged "
                f"({exc}; {path.stat().st_size} bytes): it ends early",
            )
        with archive:
            names = archive.namelist()
            pickle_name = next((n for n in names if n.endswith("/data.pkl")), None)
            prefix = "" if pickle_name is None else pickle_name.removesuffix("data.pkl")
            script = f"{prefix}constants.pkl" in names and any(
                n.startswith(f"{prefix}code/") for n in names
            )
            if pickle_name is not None and script:
                contents.format = FileFormat.TORCHSCRIPT
                contents.notes.append(
                    "a TorchScript archive (torch.jit.save): load it with "
                    "torch.jit.load(path, map_location=...); torch.load(weights_only=True) "
                    "refuses it"
                )
            if pickle_name is None:
                records = [n for n in names if "/data/" in n]
                kind, message = (
                    (DefectKind.MISSING_RECORD, "the archive has storage records but no data.pkl")
                    if records
                    else (DefectKind.UNKNOWN_FORMAT, "a zip archive, but not one torch wrote")
                )
                return contents.defect(kind, where, message)
            self._check_crcs(archive, where, contents)
            if archive.getinfo(pickle_name).file_size > PICKLE_LIMIT:
                return contents.defect(
                    DefectKind.CORRUPT_PICKLE,
                    f"{where}:{pickle_name}",
                    f"{archive.getinfo(pickle_name).file_size} bytes of pickle (more than "
                    f"{PICKLE_LIMIT}): not read",
                )
            try:
                walked = _walk_pickle(io.BytesIO(_record(archive, path, pickle_name)))
            except Exception as exc:  # a broken pickle raises many types; none runs code
                return contents.defect(
                    DefectKind.CORRUPT_PICKLE,
                    f"{where}:{pickle_name}",
                    f"{type(exc).__name__}: {exc}",
                )
            met = walked.met
            _take(contents, walked, where=f"{where}:{pickle_name}")
            storages = list(walked.storages.values())
            for position, defect in enumerate(contents.defects):
                key = defect.where.rpartition(f"{prefix}data/")[2]
                if defect.kind is DefectKind.CRC_MISMATCH and key in {s.key for s in storages}:
                    message = f"{defect.message}: it holds {_users(contents.tensors, key)}"
                    contents.defects[position] = replace(defect, message=message)
            sizes = {info.filename: info.file_size for info in archive.infolist()}
            for storage in storages:
                record = f"{prefix}data/{storage.key}"
                if record not in sizes:
                    users = _users(contents.tensors, storage.key)  # only for a defect: O(tensors)
                    contents.defect(
                        DefectKind.MISSING_RECORD,
                        f"{where}:{record}",
                        f"the record holding {users} is not in the archive",
                    )
                elif storage.element_size and sizes[record] < storage.nbytes:
                    users = _users(contents.tensors, storage.key)
                    contents.defect(
                        DefectKind.SHORT_RECORD,
                        f"{where}:{record}",
                        f"{sizes[record]} bytes, but {users} need {storage.nbytes}",
                    )
        if contents.format is FileFormat.ZIP and not contents.defects:
            contents.refused = refused_by_weights_only(path, met, zipped=True)
        elif contents.format is FileFormat.TORCHSCRIPT:
            # torch.jit.load builds TorchScript's own classes (__torch__.*); anything else a
            # TorchScript pickle names is foreign to it
            # and its own list builders (torch.jit._pickle.build_intlist, ...)
            allowed = weights_only_allowed() | TORCHSCRIPT_GLOBALS
            contents.refused = sorted(
                name for name in met if not name.startswith("__torch__.") and name not in allowed
            )
            contents.unreadable_opcodes = []  # torch.jit.load reads its pickles itself
        return contents

    @staticmethod
    def _check_crcs(archive: zipfile.ZipFile, where: str, contents: Contents) -> None:
        """Read every record to its end: ``zipfile`` checks each one's CRC-32 as it goes."""
        unchecked = 0
        for info in archive.infolist():
            if info.CRC == 0 and info.file_size > 0:
                unchecked += 1  # written with torch.serialization.config.save.compute_crc32 off
                continue
            try:
                with archive.open(info) as handle:
                    while handle.read(1 << 20):
                        pass
            except zipfile.BadZipFile as exc:
                kind = DefectKind.CRC_MISMATCH if "CRC" in str(exc) else DefectKind.TRUNCATED
                contents.defect(kind, f"{where}:{info.filename}", str(exc))
            except (EOFError, OSError, ValueError) as exc:
                contents.defect(
                    DefectKind.TRUNCATED,
                    f"{where}:{info.filename}",
                    f"the record ends early ({type(exc).__name__}: {exc})",
                )
        if unchecked:
            contents.notes.append(
                f"{unchecked} record(s) carry no CRC-32 (saved after "
                "torch.serialization.set_crc32_options(False)): their bytes are not checked"
            )


def _record(archive: zipfile.ZipFile, path: Path, name: str) -> bytes:
    """A record's bytes; one saved without a CRC-32 (stored, as torch writes every record) is
    read from its place in the file, since ``zipfile`` would call its zero CRC a mismatch."""
    info = archive.getinfo(name)
    if info.CRC != 0 or info.file_size == 0 or info.compress_type != zipfile.ZIP_STORED:
        return archive.read(info)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        return handle.read(info.file_size)


def _users(tensors: list[TensorEntry], key: str) -> str:
    names = [tensor.path for tensor in tensors if tensor.storage == key]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return shown or f"storage {key}"


class LegacyReader:
    """``torch.save`` before 1.6 (or ``_use_new_zipfile_serialization=False``): five pickles
    (magic number, protocol version, system info, the object, the storage keys), then each
    storage as an 8-byte element count and its bytes."""

    def read(self, path: Path) -> Contents:
        contents = Contents(format=FileFormat.LEGACY)
        where = str(path)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            try:
                magic = _walk_pickle(handle).root
            except Exception as exc:
                contents.format = FileFormat.UNKNOWN
                return contents.defect(
                    DefectKind.UNKNOWN_FORMAT, where, f"not a pickle torch wrote ({exc})"
                )
            if magic != LEGACY_MAGIC:
                contents.format = FileFormat.UNKNOWN
                return contents.defect(
                    DefectKind.UNKNOWN_FORMAT,
                    where,
                    "a pickle, but not torch.save's (no torch magic number)",
                )
            try:
                _walk_pickle(handle)  # protocol version
                _walk_pickle(handle)  # system info
                walked = _walk_pickle(handle, legacy=True)
                keys = _walk_pickle(handle).root
            except EOFError:
                return contents.defect(
                    DefectKind.TRUNCATED, where, _cut(handle.tell(), size, "inside its pickles")
                )
            except Exception as exc:
                return contents.defect(
                    DefectKind.CORRUPT_PICKLE, where, f"{type(exc).__name__}: {exc}"
                )
            met = walked.met
            _take(contents, walked, where=where)
            by_key = walked.storages
            position = handle.tell()
            for key in keys if isinstance(keys, list) else []:
                storage = by_key.get(str(key))
                if storage is None:  # torch.load fails: "storage key ... not found"
                    return contents.defect(
                        DefectKind.CORRUPT_PICKLE,
                        f"{where}:storage {key}",
                        "the list of storage keys names a storage the pickle does not: its "
                        "bytes cannot be told apart from the next one's",
                    )
                handle.seek(position)
                header = handle.read(8)
                if len(header) < 8:
                    return contents.defect(
                        DefectKind.TRUNCATED, where, _cut(position, size, f"at storage {key}")
                    )
                numel = int.from_bytes(header, "little", signed=True)
                element = storage.element_size
                if not element:
                    return contents.defect(
                        DefectKind.CORRUPT_PICKLE,
                        f"{where}:storage {key}",
                        f"a storage of type {storage.type}, whose element size is unknown: the "
                        "storages after it cannot be read",
                    )
                if numel != storage.numel:
                    return contents.defect(
                        DefectKind.CORRUPT_PICKLE,
                        f"{where}:storage {key}",
                        f"holds {numel} elements, the pickle says {storage.numel}",
                    )
                position += 8 + numel * element
            if size < position:
                return contents.defect(
                    DefectKind.TRUNCATED, where, _cut(size, position, "in its storages")
                )
            if size > position:
                contents.notes.append(f"{size - position} bytes follow the last storage")
        contents.refused = refused_by_weights_only(path, met, zipped=False)
        return contents


def _cut(have: int, need: int, at: str) -> str:
    """What a truncation says: how far the file goes, and how far it should."""
    if need <= have:  # the stream ended inside a pickle: how long it should be is unknown
        return f"cut short {at} at byte {have}"
    return f"cut short {at}: {have} bytes of at least {need}"


def pickle_stream_start(head: bytes) -> bool:
    """A pickle's first bytes: ``PROTO`` (0x80) and a protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 0 < head[1] <= 5
