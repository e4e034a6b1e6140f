"""DCP directories: .metadata read inertly, every shard it names checked."""

from __future__ import annotations

from pathlib import Path

from harness.files import DefectKind, FileFormat, read_contents
from harness.files.dcp_dir import dcp_global

from . import checkpoints


def test_lists_tensors_and_pickled_entries_and_names_no_foreign_global(tmp_path: Path) -> None:
    contents = read_contents(checkpoints.dcp_dir(tmp_path))
    assert contents.format is FileFormat.DCP
    tensors = {t.path: t for t in contents.tensors}
    assert tensors["model.0.weight"].shape == (4, 3)
    assert tensors["model.0.weight"].dtype == "float32"
    assert tensors["model.0.weight"].bytes == 48
    assert tensors["model.0.weight"].storage.endswith(".distcp")
    assert [o.path for o in contents.others] == ["step"]
    assert contents.refused == []
    assert all(dcp_global(name) for name in contents.globals)
    assert not contents.defects


def test_a_missing_and_a_short_shard(tmp_path: Path) -> None:
    path = checkpoints.missing_shard(tmp_path / "a")
    (missing,) = read_contents(path).defects
    assert missing.kind is DefectKind.MISSING_SHARD
    assert "model.0.weight" in missing.message
    path = checkpoints.dcp_dir(tmp_path / "b")
    (shard,) = path.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:10])
    (short,) = read_contents(path).defects
    assert short.kind is DefectKind.SHORT_SHARD
    assert short.where == str(shard)


def test_corrupt_and_hostile_metadata(tmp_path: Path) -> None:
    (corrupt,) = read_contents(checkpoints.corrupt_metadata(tmp_path / "a")).defects
    assert corrupt.kind is DefectKind.CORRUPT_METADATA
    marker = tmp_path / "ran"
    contents = read_contents(checkpoints.hostile_metadata(marker)(tmp_path / "b"))
    assert contents.refused == ["posix.system"]
    assert contents.defects[0].kind is DefectKind.CORRUPT_METADATA
    assert "not DCP's Metadata" in contents.defects[0].message
    assert not marker.exists()


def test_a_folder_without_metadata_is_not_dcp(tmp_path: Path) -> None:
    contents = read_contents(tmp_path)
    assert contents.format is FileFormat.UNKNOWN
    assert contents.defects[0].kind is DefectKind.UNKNOWN_FORMAT
