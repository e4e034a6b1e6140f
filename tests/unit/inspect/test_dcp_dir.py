"""DCP directories: .metadata read inertly, every shard it names checked."""

from __future__ import annotations

from pathlib import Path

from harness.inspect import DefectKind, FileFormat, read_contents

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
    assert "torch.distributed.checkpoint.metadata.Metadata" in contents.globals
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


def _metadata(path: Path, pickled: bytes) -> Path:
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(pickled)
    return path


def _s(text: str) -> bytes:
    return b"\x8c" + bytes([len(text)]) + text.encode()


def test_a_dotted_name_under_dcp_s_own_module_is_code(tmp_path: Path) -> None:
    """os.system reached through torch.distributed.checkpoint.filesystem's attributes: refused
    by inspect and by the golden worker's metadata unpickler; never run."""
    import io
    import pickle

    import pytest

    from harness.inspect import inspect_path
    from harness.worker.golden_load import _MetadataUnpickler

    marker = tmp_path / "ran"
    pickled = (
        b"\x80\x04"
        + _s("torch.distributed.checkpoint.metadata")
        + _s("Metadata")
        + b"\x93)\x81}("
        + _s("state_dict_metadata")
        + b"}"
        + _s("planner_data")
        + _s("torch.distributed.checkpoint.filesystem")
        + _s("os.system")
        + b"\x93"
        + _s(f"touch {marker}")
        + b"\x85Rub."
    )
    path = _metadata(tmp_path / "evil.dcp", pickled)
    found = inspect_path(path)
    assert found.contents.refused == ["torch.distributed.checkpoint.filesystem.os.system"]
    assert found.code_running == found.contents.refused
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system is not part of DCP"):
        _MetadataUnpickler(io.BytesIO(pickled)).load()
    assert not marker.exists()


def test_a_shard_outside_the_directory_is_refused(tmp_path: Path) -> None:
    path = checkpoints.dcp_dir(tmp_path)
    metadata = path / ".metadata"
    (shard,) = path.glob("*.distcp")
    data = metadata.read_bytes()
    escaped = "../../" + shard.name[: len(shard.name) - 6]
    assert len(escaped) == len(shard.name)
    metadata.write_bytes(data.replace(shard.name.encode(), escaped.encode()))
    defects = read_contents(path).defects
    assert defects[0].kind is DefectKind.CORRUPT_METADATA
    assert "outside the checkpoint directory" in defects[0].message
