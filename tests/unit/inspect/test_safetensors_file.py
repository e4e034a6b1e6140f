"""safetensors files: listed through the library, and a header that lies is named entry by entry."""

from __future__ import annotations

from pathlib import Path

from harness.inspect import DefectKind, FileFormat, read_contents

from . import checkpoints


def _rewrite(path: Path, header: bytes, data: bytes) -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def _parts(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return raw[8 : 8 + length], raw[8 + length :]


def test_lists_every_tensor_with_its_bytes_and_no_device(tmp_path: Path) -> None:
    contents = read_contents(checkpoints.safetensors_file(tmp_path))
    assert contents.format is FileFormat.SAFETENSORS
    tensors = {t.path: t for t in contents.tensors}
    assert tensors["0.weight"].shape == (4, 3)
    assert tensors["0.weight"].bytes == 48
    assert tensors["1.num_batches_tracked"].dtype == "int64"
    assert tensors["0.weight"].location.startswith("none")
    assert not contents.defects
    assert contents.refused == []


def test_a_lying_header_names_the_entry(tmp_path: Path) -> None:
    path = checkpoints.lying_header(tmp_path)
    (defect,) = read_contents(path).defects
    assert defect.kind is DefectKind.BAD_HEADER
    assert defect.where == f"{path}:0.weight"
    assert "F32 [5, 3] needs 60 bytes, the header gives it 48" in defect.message


def test_a_cut_file_and_trailing_bytes_are_told_apart(tmp_path: Path) -> None:
    path = checkpoints.safetensors_file(tmp_path)
    header, data = _parts(path)
    _rewrite(path, header, data[:-4])
    (cut,) = read_contents(path).defects
    assert cut.kind is DefectKind.TRUNCATED
    _rewrite(path, header, data + b"1234")
    (extra,) = read_contents(path).defects
    assert extra.kind is DefectKind.BAD_HEADER
    assert "4 bytes follow the last tensor" in extra.message
    path.write_bytes(path.read_bytes()[:20])
    (inside,) = read_contents(path).defects
    assert inside.kind is DefectKind.TRUNCATED
    assert "inside the header" in inside.message


def test_a_header_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    _rewrite(path, b"{not json}", b"")
    (defect,) = read_contents(path).defects
    assert defect.kind is DefectKind.BAD_HEADER
    assert "not JSON" in defect.message


def test_overlapping_ranges(tmp_path: Path) -> None:
    path = tmp_path / "overlap.safetensors"
    header = (
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    )
    _rewrite(path, header, bytes(12))
    (defect,) = read_contents(path).defects
    assert defect.where.endswith(":b")
    assert "overlaps the tensor before it" in defect.message
