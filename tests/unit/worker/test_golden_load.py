"""The golden worker job, run in this process: each format loaded by its safe loader, every
tensor recorded under the name ``inspect`` lists it by, nothing hostile ever run."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.core.jobspec import GoldenSpec
from harness.inspect import read_contents
from harness.worker.fingerprint import tensor_digest
from harness.worker.golden_load import (
    _load_sharded,
    _MetadataUnpickler,
    map_policy,
    placement,
    resolve_global,
    run_golden,
)
from tests.unit.inspect import checkpoints
from tests.unit.inspect.pretrained import INDEX, save_gpt2


def golden(path: Path, **fields: object) -> dict[str, Any]:
    spec = GoldenSpec(label=path.name, path=str(path), report_path="unused", **fields)  # type: ignore[arg-type]
    return run_golden(spec)


@pytest.mark.parametrize("fmt", sorted(checkpoints.GOOD))
def test_every_format_records_the_tensors_inspect_lists(tmp_path: Path, fmt: str) -> None:
    path = checkpoints.GOOD[fmt](tmp_path)
    report = golden(path)
    assert report["status"] == "loaded", report
    tensors = report["tensors"]
    assert isinstance(tensors, dict)
    listed = {t.path for t in read_contents(path).tensors}
    assert set(tensors) == listed
    prefix = "model." if fmt == "dcp" else ""
    weight = checkpoints.state()["0.weight"]
    assert tensors[f"{prefix}0.weight"]["digest"] == tensor_digest(weight)
    assert report["map_location"] == "none"
    assert report["format"] == fmt


def test_refused_globals_are_recorded_unless_allowed(tmp_path: Path) -> None:
    path = checkpoints.train_state_file(tmp_path)
    refused = golden(path)
    assert refused["status"] == "needs_globals"
    assert refused["refused"] == ["argparse.Namespace"]
    allowed = golden(path, safe_globals=("argparse.Namespace",))
    assert allowed["status"] == "loaded"
    assert "optimizer.state.0.exp_avg" in allowed["tensors"]


def test_hostile_files_are_never_loaded_even_when_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    for name, (maker, _) in checkpoints.bad_inputs(marker).items():
        path = maker(checkpoints.fresh(tmp_path, name))
        report = golden(path, safe_globals=("posix.system",))
        assert report["status"] in ("broken", "dangerous"), (name, report)
    assert not marker.exists()


def test_a_changed_file_is_not_loaded(tmp_path: Path) -> None:
    path = checkpoints.zip_file(tmp_path)
    report = golden(path, expected_sha256="0" * 64)
    assert report["status"] == "changed"
    assert "tensors" not in report


def test_saved_cuda_locations_the_worker_lacks_load_on_the_cpu(tmp_path: Path) -> None:
    from harness.worker.one_process import save_atomic, tagged_as

    path = tmp_path / "cuda1.pt"
    with tagged_as("cuda:1"):
        save_atomic({"w": torch.ones(2)}, path)
    report = golden(path)
    assert report["map_location"] == "cpu"
    assert report["tensors"]["w"]["saved"] == "cuda:1"
    assert report["tensors"]["w"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("locations", "count", "policy"),
    [({"cpu"}, 0, "none"), ({"cuda:0"}, 0, "cpu"), ({"cuda:1"}, 2, "none"), ({"mps"}, 1, "cpu")],
)
def test_map_policy(locations: set[str], count: int, policy: str) -> None:
    assert map_policy(locations, count) == policy


def test_resolve_global() -> None:
    import argparse

    assert resolve_global("argparse.Namespace") is argparse.Namespace
    with pytest.raises(ImportError, match="no importable module"):
        resolve_global("nowhere_at_all.Thing")


def test_the_metadata_unpickler_builds_dcp_classes_only(tmp_path: Path) -> None:
    path = checkpoints.dcp_dir(tmp_path)
    metadata = _MetadataUnpickler(io.BytesIO((path / ".metadata").read_bytes())).load()
    assert "model.0.weight" in metadata.state_dict_metadata
    marker = tmp_path / "ran"
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system is not part of DCP"):
        _MetadataUnpickler(io.BytesIO(pickle.dumps(checkpoints.Payload(marker)))).load()
    assert not marker.exists()


def test_two_tensors_on_one_path_are_both_recorded(tmp_path: Path) -> None:
    path = tmp_path / "clash.pt"
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, path)
    report = golden(path)
    assert sorted(report["tensors"]) == ["a.b", "a.b#2"]


def test_a_python2_file_saved_from_cuda_loads_on_the_cpu_here(tmp_path: Path) -> None:
    """What a model zoo ships (a Python 2 pickle, storages saved from cuda:0): recorded on the
    CPU as the matrix falls back, every tensor saying where it was saved."""
    from collections import OrderedDict

    from tests.unit.inspect.py2 import py2_save

    path = py2_save(OrderedDict(checkpoints.state()), tmp_path / "py2.pt", location="cuda:0")
    report = golden(path)
    assert report["status"] == "loaded", report
    assert (report["map_choice"], report["map_location"]) == ("auto", "cpu")
    assert {t["saved"] for t in report["tensors"].values()} == {"cuda:0"}
    assert {t["device"] for t in report["tensors"].values()} == {"cpu"}
    weight = checkpoints.state()["0.weight"]
    assert report["tensors"]["0.weight"]["digest"] == tensor_digest(weight)
    if not torch.cuda.is_available():  # loaded where saved, as asked: torch's own refusal
        as_saved = golden(path, map_location="as-saved")
        assert as_saved["status"] == "raised"
        assert as_saved["error_class"] == "cuda_unavailable"


def test_latin1_python2_strings_load_with_their_encoding(tmp_path: Path) -> None:
    from collections import OrderedDict

    from tests.unit.inspect.py2 import py2_save

    path = py2_save(OrderedDict([("café", torch.ones(2))]), tmp_path / "l.pt", latin1=True)
    report = golden(path)
    assert report["status"] == "loaded", report
    assert list(report["tensors"]) == ["café"]


@pytest.mark.parametrize(
    ("choice", "located", "count", "passed"),
    [
        ("auto", {"cuda:0"}, 0, "cpu"),
        ("auto", {"cuda:0"}, 1, "none"),
        ("cpu", {"cuda:0"}, 1, "cpu"),
        ("cuda:1", {"cpu"}, 2, "cuda:1"),
        ("as-saved", {"cuda:3"}, 0, "none"),
        ("", {"cuda:0"}, 0, "cpu"),  # a recording made before the option
    ],
)
def test_placement(choice: str, located: set[str], count: int, passed: str) -> None:
    assert placement(choice, located, count) == passed


def test_files_a_weights_only_load_cannot_read_are_not_loaded(tmp_path: Path) -> None:
    from collections import OrderedDict

    from tests.unit.inspect.py2 import py2_save, tar_save

    tar = golden(tar_save({"w": torch.ones(2)}, tmp_path / "old.pt"))
    assert tar["status"] == "unreadable"
    assert "legacy .tar format" in tar["message"]
    long = golden(py2_save(OrderedDict([("x" * 300, torch.ones(1))]), tmp_path / "long.pt"))
    assert long["status"] == "unreadable"
    assert "BINSTRING" in long["message"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2(tmp_path_factory.mktemp("gpt2"))


def shard_digests(folder: Path) -> dict[str, tuple[str, str]]:
    """Each tensor of each shard, read by safetensors itself: its shard and digest."""
    from safetensors import safe_open

    found = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                found[name] = (shard.name, tensor_digest(handle.get_tensor(name)))
    return found


def test_a_sharded_safetensors_folder_is_one_checkpoint(gpt2: Path, tmp_path: Path) -> None:
    report = golden(gpt2)
    assert report["status"] == "loaded", report
    assert report["format"] == "safetensors_sharded"
    expected = shard_digests(gpt2)
    assert len({shard for shard, _ in expected.values()}) > 2
    assert {name: t["digest"] for name, t in report["tensors"].items()} == {
        name: digest for name, (_, digest) in expected.items()
    }
    assert {t["saved"] for t in report["tensors"].values()} == {
        "none (safetensors records no device)"
    }
    # its bytes are the index's and the shards', not the config's beside them
    parts = [gpt2 / INDEX, *gpt2.glob("model-*-of-*.safetensors")]
    assert report["bytes"] == sum(part.stat().st_size for part in parts)
    # the index named instead of its folder: the same checkpoint
    by_index = golden(gpt2 / INDEX)
    assert (by_index["tensors"], by_index["sha256"]) == (report["tensors"], report["sha256"])
    # the digest covers the shards, not the configuration
    folder = Path(shutil.copytree(gpt2, tmp_path / "copy"))
    (folder / "config.json").write_text("{}")
    assert golden(folder)["sha256"] == report["sha256"]
    shard = next(folder.glob("model-*-of-*.safetensors"))
    shard.write_bytes(shard.read_bytes())  # the same bytes: the same digest
    assert golden(folder)["sha256"] == report["sha256"]


def test_a_changed_shard_is_loaded_to_name_the_tensor_that_changed(
    gpt2: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    recorded = golden(gpt2)
    folder = Path(shutil.copytree(gpt2, tmp_path / "copy"))
    name, (shard, _) = sorted(shard_digests(folder).items())[-1]
    tensors = load_file(str(folder / shard))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    report = golden(folder, expected_sha256=recorded["sha256"])
    assert report["status"] == "changed"
    assert report["sha256"] != recorded["sha256"]
    differ = [n for n, t in report["tensors"].items() if t != recorded["tensors"][n]]
    assert differ == [name]


@pytest.mark.parametrize("defect", ["missing_shard", "stale_index", "unindexed_tensor"])
def test_a_sharded_checkpoint_inspect_finds_broken_is_not_loaded(
    gpt2: Path, tmp_path: Path, defect: str
) -> None:
    folder = Path(shutil.copytree(gpt2, tmp_path / "copy"))
    index = json.loads((folder / INDEX).read_text())
    weight_map: dict[str, str] = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    name = next(n for n, shard in weight_map.items() if shard == shards[0])
    if defect == "missing_shard":
        (folder / shards[0]).unlink()
    elif defect == "stale_index":
        weight_map[name] = shards[1]
    else:
        del weight_map[name]
    (folder / INDEX).write_text(json.dumps(index))
    report = golden(folder)
    assert report["status"] == "broken"
    assert "tensors" not in report
    (found,) = report["defects"]
    assert found["kind"] == defect
    where = shards[1] if defect == "stale_index" else shards[0]
    assert found["where"] == str(folder / where)
    assert f"{folder / where}: {defect}: " in report["message"]


def test_shards_that_no_longer_match_the_index_are_never_loaded_in_part(
    gpt2: Path, tmp_path: Path
) -> None:
    """The index inspect checked, changed before the load read it: the load raises."""
    folder = Path(shutil.copytree(gpt2, tmp_path / "copy"))
    index = json.loads((folder / INDEX).read_text())
    name = sorted(index["weight_map"])[0]
    del index["weight_map"][name]
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"in them, not indexed: {re.escape(name)}\)"):
        _load_sharded(folder, None)
