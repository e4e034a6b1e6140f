"""``torch.save`` files as Python 2's torch wrote them, for the tests: every ``str`` a byte
string (``SHORT_BINSTRING``, or ``BINSTRING`` past 255 bytes) and an ``OrderedDict`` pickled as
a call with its items and its ``__dict__`` as state, as Python 2's ``OrderedDict.__reduce__``
gives it. A real one ships in lpips 0.1.4 (tests/data/real_files); these vary what it fixes.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, ClassVar

import torch

from harness.worker.main import tagged_as


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
