"""``torch.save`` files as Python 2's torch wrote them, for the tests: every ``str`` a byte
string (``SHORT_BINSTRING``, or ``BINSTRING`` past 255 bytes) and an ``OrderedDict`` pickled as
a call with its items and its ``__dict__`` as state, as Python 2's ``OrderedDict.__reduce__``
gives it. A real one ships in lpips 0.1.4 (tests/data/real_files); these vary what it fixes.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, ClassVar

import torch

from harness.worker.one_process import tagged_as


class Py2Pickler(pickle._Pickler):
    """Python's own pickler, writing strings and OrderedDicts as Python 2 did."""

    encoding: ClassVar[str] = "utf-8"
    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def save_str(self, obj: str) -> None:
        data = obj.encode(self.encoding)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)  # type: ignore[attr-defined]
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[str] = save_str

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is OrderedDict:
            return OrderedDict, ([[k, v] for k, v in obj.items()],), dict(vars(obj)) or None
        return NotImplemented


class Latin1Pickler(Py2Pickler):
    encoding = "latin1"


class ViewPickler(Py2Pickler):
    """Names each storage as a view of its root from element 3 on, as torch <= 0.4 saved a
    storage that was a slice of another: ``(view_key, offset, view_size)`` in its persistent id."""

    def save_pers(self, pid: Any) -> None:
        if isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None:
            pid = (*pid[:5], (f"{pid[2]}v", 3, pid[4] - 3))
        super().save_pers(pid)  # type: ignore[misc]


def _module(pickler: type[Py2Pickler]) -> SimpleNamespace:
    def dump(obj: Any, file: IO[bytes], protocol: int = 2) -> None:
        pickler(file, protocol).dump(obj)

    return SimpleNamespace(__name__="py2_pickle", Pickler=pickler, dump=dump)


def py2_save(
    obj: Any, path: Path, *, location: str = "", latin1: bool = False, views: bool = False
) -> Path:
    """``obj`` saved as a Python 2 torch wrote it (protocol 2, the legacy stream), its storages
    tagged ``location`` (``cuda:0``) where given, named as views (:class:`ViewPickler`) if
    ``views``."""
    module = _module(ViewPickler if views else Latin1Pickler if latin1 else Py2Pickler)
    buffer = io.BytesIO()
    if location:
        with tagged_as(location):
            torch.save(obj, buffer, pickle_module=module, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, buffer, pickle_module=module, _use_new_zipfile_serialization=False)
    path.write_bytes(buffer.getvalue())
    return path


def tar_save(obj: Any, path: Path, *, location: str = "cpu") -> Path:
    """``obj`` (tensors in plain containers) saved as torch <= 0.1.x wrote it: a tar of
    ``sys_info``, ``pickle`` (tensors as persistent ids ``str(key)``), ``tensors`` (each one's
    header, sizes, strides and offset) and ``storages`` (each one's header, element count and
    bytes, then the views), each part pickled by Python 2's rules (torch's own ``legacy_load``
    in ``torch/serialization.py`` is the reader this follows)."""
    tensors: dict[int, torch.Tensor] = {}

    class ObjectPickler(Py2Pickler):
        def persistent_id(self, value: Any) -> str | None:
            if isinstance(value, torch.Tensor):
                tensors[id(value)] = value
                return str(id(value))
            return None

    def dumped(value: Any, pickler: type[Py2Pickler] = Py2Pickler) -> bytes:
        buffer = io.BytesIO()
        pickler(buffer, 2).dump(value)
        return buffer.getvalue()

    parts = {"sys_info": dumped({"protocol_version": 1001, "little_endian": True})}
    parts["pickle"] = dumped(obj, ObjectPickler)
    storages: dict[int, torch.Tensor] = {}
    tensor_part = dumped(len(tensors))
    for key, tensor in tensors.items():
        storage_key = tensor.untyped_storage().data_ptr()
        storages.setdefault(storage_key, tensor)
        tensor_type = getattr(torch, tensor.type().removeprefix("torch."))  # torch.FloatTensor
        tensor_part += dumped((key, storage_key, tensor_type))
        tensor_part += struct.pack("<i", tensor.dim()) + bytes(4)
        tensor_part += struct.pack(f"<{tensor.dim()}q", *tensor.shape)
        tensor_part += struct.pack(f"<{tensor.dim()}q", *tensor.stride())
        tensor_part += struct.pack("<q", tensor.storage_offset())
    parts["tensors"] = tensor_part
    storage_part = dumped(len(storages))
    for key, tensor in storages.items():
        storage = tensor.untyped_storage()
        storage_type = getattr(
            torch, tensor.type().removeprefix("torch.").replace("Tensor", "Storage")
        )
        storage_part += dumped((key, location, storage_type))
        storage_part += struct.pack("<q", storage.nbytes() // tensor.element_size())
        storage_part += bytes(storage)
    parts["storages"] = storage_part + dumped([])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for name in ("sys_info", "pickle", "tensors", "storages"):
            info = tarfile.TarInfo(name)
            info.size = len(parts[name])
            archive.addfile(info, io.BytesIO(parts[name]))
    path.write_bytes(buffer.getvalue())
    return path


class KnownOnly(pickle.Unpickler):
    """An unpickler that builds torch's tensor and storage types and OrderedDict, nothing else:
    how a test reads its own tar file with ``torch.load``, which has no weights-only path for
    the format."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict") or (
            module == "torch" and name.endswith(("Tensor", "Storage"))
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor type")


KNOWN_ONLY = SimpleNamespace(
    __name__="known_only",
    Unpickler=KnownOnly,
    load=lambda file, **kwargs: KnownOnly(file, **kwargs).load(),
)
