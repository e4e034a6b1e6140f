"""A sharded safetensors checkpoint written by transformers' ``save_pretrained``: read as one,
every shard's tensors listed with the shard holding it, and the index checked against the
shards (a missing shard, a stale entry, a tensor the index lost)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.inspect import BROKEN, INTACT, DefectKind, FileFormat, inspect_path, read_contents

from .pretrained import INDEX, save_gpt2


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2(tmp_path_factory.mktemp("gpt2"))


def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def weight_map(folder: Path) -> dict[str, str]:
    found: dict[str, str] = json.loads((folder / INDEX).read_text())["weight_map"]
    return found


def edit_index(folder: Path, change: Any) -> None:
    index = json.loads((folder / INDEX).read_text())
    change(index)
    (folder / INDEX).write_text(json.dumps(index))


def by_shard(folder: Path) -> dict[str, list[str]]:
    shards: dict[str, list[str]] = {}
    for name, shard in sorted(weight_map(folder).items()):
        shards.setdefault(shard, []).append(name)
    return shards


def test_lists_every_tensor_in_every_shard_with_its_shard(saved: Path) -> None:
    from safetensors import safe_open

    expected = {}
    for shard in saved.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = handle.get_tensor(name)
                dtype = str(tensor.dtype).removeprefix("torch.")
                expected[name] = (dtype, tuple(tensor.shape), tensor.nbytes, shard.name)
    found = inspect_path(saved)
    assert found.contents.format is FileFormat.SAFETENSORS_SHARDED
    assert found.exit_code == INTACT, found.describe()
    listed = {
        t.path: (t.dtype, t.shape, t.bytes, t.storage.split(" ")[0]) for t in found.contents.tensors
    }
    assert listed == expected
    assert "lm_head.weight" not in listed  # tied to the embeddings: transformers saves it once
    # the index file itself reads the same
    assert read_contents(saved / INDEX).tensors == found.contents.tensors
    first = found.contents.tensors[0]
    assert f"{first.storage}" in found.describe()
    assert json.loads(json.dumps(found.to_json()))["format"] == "safetensors_sharded"


def test_a_missing_shard_names_the_tensors_it_held(saved: Path, tmp_path: Path) -> None:
    folder = copy(saved, tmp_path)
    shard, names = max(by_shard(folder).items(), key=lambda item: len(item[1]))
    assert len(names) > 4
    (folder / shard).unlink()
    found = inspect_path(folder)
    assert found.exit_code == BROKEN
    (defect,) = found.contents.defects
    assert defect.kind is DefectKind.MISSING_SHARD
    assert defect.where == str(folder / shard)
    assert f"for {len(names)} tensor(s) is missing: {', '.join(names[:4])} and " in defect.message
    assert f"and {len(names) - 4} more" in defect.message
    assert "every shard file with the .metadata or index that names it" in found.describe()
    assert not {t.path for t in found.contents.tensors} & set(names)


def test_an_entry_pointing_at_the_wrong_shard(saved: Path, tmp_path: Path) -> None:
    folder = copy(saved, tmp_path)
    (home, names), (wrong, _) = list(by_shard(folder).items())[:2]

    def move(index: dict[str, Any]) -> None:
        index["weight_map"][names[0]] = wrong

    edit_index(folder, move)
    (defect,) = read_contents(folder).defects
    assert defect.kind is DefectKind.STALE_INDEX
    assert defect.where == str(folder / wrong)
    assert f"{INDEX} puts 1 tensor(s) in this shard, which does not hold them" in defect.message
    assert f"{names[0]} (held by {home})" in defect.message


def test_a_tensor_the_index_lost(saved: Path, tmp_path: Path) -> None:
    folder = copy(saved, tmp_path)
    shard, names = next(iter(by_shard(folder).items()))
    edit_index(folder, lambda index: index["weight_map"].pop(names[-1]))
    found = inspect_path(folder)
    (defect,) = found.contents.defects
    assert defect.kind is DefectKind.UNINDEXED_TENSOR
    assert defect.where == str(folder / shard)
    assert f"holds 1 tensor(s) that {INDEX} does not map to it: {names[-1]}" in defect.message
    assert "never loads these tensors" in found.describe()
    assert names[-1] in {t.path for t in found.contents.tensors}  # listed all the same


def test_a_shard_the_index_does_not_name(saved: Path, tmp_path: Path) -> None:
    folder = copy(saved, tmp_path)
    shard, names = list(by_shard(folder).items())[-1]

    def forget(index: dict[str, Any]) -> None:
        for name in names:
            del index["weight_map"][name]

    edit_index(folder, forget)
    (defect,) = read_contents(folder).defects
    assert defect.kind is DefectKind.UNINDEXED_TENSOR
    assert defect.where == str(folder / shard)
    assert f"holds {len(names)} tensor(s)" in defect.message


def test_total_size_is_the_tensors_bytes_and_a_mismatch_is_only_a_note(
    saved: Path, tmp_path: Path
) -> None:
    total = json.loads((saved / INDEX).read_text())["metadata"]["total_size"]
    found = read_contents(saved)
    assert total == sum(t.bytes or 0 for t in found.tensors)
    assert not [note for note in found.notes if "total_size" in note]
    folder = copy(saved, tmp_path)
    edit_index(folder, lambda index: index["metadata"].update(total_size=total + 8))
    found = read_contents(folder)
    assert not found.defects
    (note,) = [note for note in found.notes if "total_size" in note]
    assert f"total_size is {total + 8:,} bytes, its shards' tensors hold {total:,}" in note


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ('{"metadata": {}}', "has no weight_map"),
        ('{"weight_map": {"a": ["x"]}}', "has no weight_map"),
    ],
)
def test_a_broken_index(saved: Path, tmp_path: Path, text: str, message: str) -> None:
    folder = copy(saved, tmp_path)
    (folder / INDEX).write_text(text)
    found = inspect_path(folder / INDEX)
    assert found.exit_code == BROKEN
    (defect,) = found.contents.defects
    assert defect.kind is DefectKind.BAD_INDEX
    assert defect.where == str(folder / INDEX)
    assert message in defect.message


def test_a_shard_outside_the_folder_is_not_read(saved: Path, tmp_path: Path) -> None:
    folder = copy(saved, tmp_path)
    outside = tmp_path / "outside.safetensors"
    name, shard = next(iter(weight_map(folder).items()))
    shutil.copy(folder / shard, outside)
    edit_index(folder, lambda index: index["weight_map"].update({name: "../outside.safetensors"}))
    defects = read_contents(folder).defects
    assert defects[0].kind is DefectKind.BAD_INDEX
    assert "'../outside.safetensors', not a file beside the index" in defects[0].message


def test_two_indexes_in_one_folder_ask_for_one(saved: Path, tmp_path: Path) -> None:
    folder = copy(saved, tmp_path)
    shutil.copy(folder / INDEX, folder / f"other{INDEX.removeprefix('model')}")
    (defect,) = read_contents(folder).defects
    assert defect.kind is DefectKind.UNKNOWN_FORMAT
    assert "holds 2 safetensors indexes" in defect.message
    assert not read_contents(folder / INDEX).defects
