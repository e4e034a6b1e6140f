"""Files as Python 2's torch wrote them (byte strings, OrderedDicts pickled as calls), and the
storages a listing must account for: read as ``torch.load`` reads them."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.inspect import BROKEN, INTACT, NEEDS_GLOBALS, DefectKind, inspect_path, read_contents

from . import checkpoints
from .py2 import KNOWN_ONLY, py2_save, tar_save


def _state() -> OrderedDict[str, torch.Tensor]:
    state = OrderedDict(checkpoints.state())
    state._metadata = OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined]
    return state


def test_a_python2_file_lists_what_torch_load_gives_at_its_saved_location(tmp_path: Path) -> None:
    path = py2_save(_state(), tmp_path / "py2.pt", location="cuda:0")
    assert b"U\x06cuda:0" in path.read_bytes()  # SHORT_BINSTRING, as Python 2 wrote it
    seen: list[str] = []

    def record(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    loaded = torch.load(path, map_location=record, weights_only=True)
    found = inspect_path(path, gpus=0)
    listed = [(t.path, t.dtype, t.shape, t.location) for t in found.contents.tensors]
    assert listed == [
        (name, str(t.dtype).removeprefix("torch."), tuple(t.shape), "cuda:0")
        for name, t in loaded.items()
    ]
    assert set(seen) == {"cuda:0"}
    assert found.exit_code == INTACT, found.describe()
    assert not found.contents.notes  # no "bytes follow the last storage"
    assert "map_location='cpu'" in " ".join(found.advice)


def test_a_python2_string_over_255_bytes_is_refused_by_a_weights_only_load(
    tmp_path: Path,
) -> None:
    path = py2_save(OrderedDict([("x" * 300, torch.ones(2))]), tmp_path / "long.pt")
    try:
        torch.load(path, weights_only=True)
        raise AssertionError("torch read BINSTRING under weights_only=True: update the reader")
    except pickle.UnpicklingError:
        pass
    found = inspect_path(path)
    assert found.contents.unreadable_opcodes == ["BINSTRING"]
    assert found.exit_code == NEEDS_GLOBALS
    assert not found.code_running
    assert "cannot read pickle opcode(s) BINSTRING" in found.describe()


def test_python2_strings_that_are_not_utf8_need_latin1(tmp_path: Path) -> None:
    path = py2_save(OrderedDict([("café", torch.ones(2))]), tmp_path / "latin.pt", latin1=True)
    try:
        torch.load(path, weights_only=True)
        raise AssertionError("torch decoded Latin-1 as UTF-8: update the reader")
    except UnicodeDecodeError:
        pass
    with pytest.warns(UserWarning, match="pickle_load_args"):  # it warns, yet decodes as told
        assert list(torch.load(path, weights_only=True, encoding="latin1")) == ["café"]
    found = inspect_path(path)
    assert [t.path for t in found.contents.tensors] == ["café"]
    assert found.contents.encoding == "latin1"
    assert found.exit_code == INTACT
    assert "encoding='latin1'" in " ".join(found.advice)


def test_storages_no_listed_tensor_uses_are_a_defect_never_intact(tmp_path: Path) -> None:
    """A pickle that builds its tensors in a way the reader does not follow (here a function it
    does not know) still names their storages: the listing is incomplete, and says so."""
    path = tmp_path / "odd.pt"
    torch.save(checkpoints.state(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes().replace(b"_rebuild_tensor_v2", b"_assemble_tensor_2")
    path.write_bytes(data)
    found = inspect_path(path)
    assert not found.contents.tensors
    assert found.exit_code == BROKEN
    assert found.contents.defects[0].kind is DefectKind.UNLISTED_STORAGE
    assert "belong to no tensor listed here" in found.describe()


def test_a_zip_storage_no_listed_tensor_uses_is_a_defect(tmp_path: Path) -> None:
    source = checkpoints.zip_file(tmp_path)
    path = tmp_path / "odd.pt"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"_rebuild_tensor_v2", b"_assemble_tensor_2")
            new.writestr(info, data)
    contents = read_contents(path)
    assert [d.kind for d in contents.defects] == [DefectKind.UNLISTED_STORAGE]


def test_a_sparse_tensor_is_named_not_missed(tmp_path: Path) -> None:
    path = tmp_path / "sparse.pt"
    torch.save({"s": torch.eye(3).to_sparse(), "w": torch.ones(2)}, path)
    found = inspect_path(path)
    assert not found.contents.defects, found.describe()
    assert [t.path for t in found.contents.tensors] == ["w"]
    assert any(o.type.startswith("tensor not listed") for o in found.contents.others)


def test_a_legacy_ordered_dict_built_by_a_call_keeps_its_items() -> None:
    from harness.inspect.pickles import children, walk

    from .py2 import Py2Pickler

    buffer = io.BytesIO()
    Py2Pickler(buffer, 2).dump(OrderedDict([("a", 1), ("b", [2])]))
    root, met = walk(io.BytesIO(buffer.getvalue()))
    assert met == ["collections.OrderedDict"]
    assert dict(children(root)) == {"a": 1, "b": [2]}


def test_storages_saved_as_views_of_a_root_are_read_as_torch_reads_them(tmp_path: Path) -> None:
    root = torch.arange(10.0)
    path = py2_save({"a": root[:4], "b": root[:2]}, tmp_path / "views.pt", views=True)
    loaded = torch.load(path, weights_only=True)
    assert loaded["a"].tolist() == [3.0, 4.0, 5.0, 6.0]  # the view starts at element 3
    found = inspect_path(path)
    assert found.exit_code == INTACT, found.describe()
    listed = [(t.path, t.dtype, t.shape, t.location) for t in found.contents.tensors]
    assert listed == [("a", "float32", (4,), "cpu"), ("b", "float32", (2,), "cpu")]
    assert not found.contents.notes


def test_the_tar_format_of_torch_0_1_lists_what_torch_load_gives(tmp_path: Path) -> None:
    state = OrderedDict([("w", torch.arange(6.0).reshape(2, 3)), ("n", torch.tensor(3))])
    state["t"] = state["w"].t()  # shares w's storage, strided
    path = tar_save(state, tmp_path / "old.pt", location="cuda:0")
    with pytest.raises(RuntimeError, match=r"legacy \.tar format"):
        torch.load(path, weights_only=True)
    seen: list[str] = []

    def record(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    loaded = torch.load(path, weights_only=False, pickle_module=KNOWN_ONLY, map_location=record)
    found = inspect_path(path)
    assert str(found.contents.format) == "torch_legacy_tar"
    listed = [(t.path, t.dtype, t.shape, t.location) for t in found.contents.tensors]
    assert listed == [
        (name, str(t.dtype).removeprefix("torch."), tuple(t.shape), "cuda:0")
        for name, t in loaded.items()
    ]
    assert set(seen) == {"cuda:0"}
    assert found.exit_code == NEEDS_GLOBALS, found.describe()
    assert not found.code_running
    assert "legacy .tar format" in found.describe()


def test_a_tar_cut_short_or_not_torchs_is_named(tmp_path: Path) -> None:
    import tarfile

    path = tar_save({"w": torch.ones(300)}, tmp_path / "old.pt")
    path.write_bytes(path.read_bytes()[:2048])
    found = inspect_path(path)
    assert found.exit_code == BROKEN
    assert found.contents.defects[0].kind is DefectKind.TRUNCATED, found.describe()
    other = tmp_path / "data.tar"
    with tarfile.open(other, "w") as archive:
        archive.add(path, arcname="images/0.png")
    found = inspect_path(other)
    assert found.exit_code == BROKEN
    assert found.contents.defects[0].kind is DefectKind.UNKNOWN_FORMAT
    assert "not one torch <= 0.1 wrote" in found.describe()
