"""torch.save files (zip and legacy) and TorchScript archives, listed and checked."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from harness.inspect import DefectKind, FileFormat, read_contents

from . import checkpoints


def test_a_training_checkpoint_lists_nested_tensors_and_other_entries(tmp_path: Path) -> None:
    contents = read_contents(checkpoints.train_state_file(tmp_path))
    assert contents.format is FileFormat.ZIP
    tensors = {t.path: t for t in contents.tensors}
    assert tensors["model.0.weight"].shape == (4, 3)
    assert tensors["model.0.weight"].dtype == "float32"
    assert tensors["model.0.weight"].bytes == 48
    assert tensors["model.0.weight"].location == "cpu"
    assert tensors["model.1.num_batches_tracked"].dtype == "int64"
    assert tensors["optimizer.state.0.exp_avg"].shape == (4, 3)
    others = {o.path: o for o in contents.others}
    assert others["epoch"].type == "int"
    assert others["epoch"].value == "3"
    assert others["args"].type == "argparse.Namespace"
    assert others["optimizer.param_groups.0.lr"].type == "float"
    assert contents.refused == ["argparse.Namespace"]
    assert not contents.defects


def test_legacy_lists_the_same_tensors_as_zip(tmp_path: Path) -> None:
    zipped = read_contents(checkpoints.zip_file(tmp_path))
    legacy = read_contents(checkpoints.legacy_file(tmp_path))
    assert legacy.format is FileFormat.LEGACY
    assert not legacy.defects
    assert [(t.path, t.dtype, t.shape) for t in legacy.tensors] == [
        (t.path, t.dtype, t.shape) for t in zipped.tensors
    ]
    assert legacy.refused == zipped.refused == []


def test_a_whole_model_lists_module_names_and_its_classes_as_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(checkpoints.model(), path)
    contents = read_contents(path)
    assert [t.path for t in contents.tensors][:2] == ["0.weight", "0.bias"]
    assert "torch.nn.modules.container.Sequential" in contents.refused
    assert contents.others[0].type == "torch.nn.modules.container.Sequential"


def test_a_whole_model_in_the_legacy_format_is_intact_not_corrupt(tmp_path: Path) -> None:
    # the legacy format persists each module's class as ("module", class, file, source) and
    # calls it with NEWOBJ: once read as a damaged pickle, a false alarm on every such file
    path = tmp_path / "whole-legacy.pt"
    torch.save(checkpoints.model(), path, _use_new_zipfile_serialization=False)
    contents = read_contents(path)
    zipped = read_contents(checkpoints.zip_file(tmp_path))
    assert contents.format is FileFormat.LEGACY
    assert not contents.defects
    assert [t.path for t in contents.tensors][:2] == ["0.weight", "0.bias"]
    assert len(contents.tensors) == len(zipped.tensors)
    assert "torch.nn.modules.container.Sequential" in contents.refused
    assert contents.others[0].type == "torch.nn.modules.container.Sequential"


def test_saved_locations_come_from_the_file(tmp_path: Path) -> None:
    from harness.worker.one_process import save_atomic, tagged_as

    path = tmp_path / "cuda1.pt"
    with tagged_as("cuda:1"):
        save_atomic({"w": torch.ones(2)}, path)
    assert [t.location for t in read_contents(path).tensors] == ["cuda:1"]


def test_torchscript_is_recognised_and_listed(tmp_path: Path) -> None:
    contents = read_contents(checkpoints.torchscript_file(tmp_path))
    assert contents.format is FileFormat.TORCHSCRIPT
    assert [t.path for t in contents.tensors][:2] == ["0.weight", "0.bias"]
    assert any("torch.jit.load" in note for note in contents.notes)


def test_a_flipped_byte_names_the_record_and_its_tensor(tmp_path: Path) -> None:
    path = checkpoints.flipped_byte(tmp_path)
    (defect,) = read_contents(path).defects
    assert defect.kind is DefectKind.CRC_MISMATCH
    assert defect.where == f"{path}:weights/data/0"
    assert "it holds 0.weight" in defect.message
    # what torch.load does with the same file: loads the changed tensor without a word
    loaded = torch.load(path, weights_only=True)
    assert not torch.equal(loaded["0.weight"], checkpoints.state()["0.weight"])


def test_records_without_crcs_are_noted_not_failed(tmp_path: Path) -> None:
    path = tmp_path / "nocrc.pt"
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(checkpoints.state(), path)
    finally:
        torch.serialization.set_crc32_options(before)
    contents = read_contents(path)
    assert not contents.defects
    assert any("carry no CRC-32" in note for note in contents.notes)


@pytest.mark.parametrize(
    ("maker", "kind", "text"),
    [
        (checkpoints.truncated, DefectKind.TRUNCATED, "central directory"),
        (checkpoints.legacy_cut, DefectKind.TRUNCATED, "cut short"),
        (checkpoints.missing_record, DefectKind.MISSING_RECORD, "holding 1.weight"),
    ],
)
def test_broken_torch_files(tmp_path: Path, maker: object, kind: DefectKind, text: str) -> None:
    assert callable(maker)
    (defect,) = read_contents(maker(tmp_path)).defects
    assert defect.kind is kind
    assert text in defect.message


def test_a_plain_pickle_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    contents = read_contents(path)
    assert contents.format is FileFormat.UNKNOWN
    assert contents.defects[0].kind is DefectKind.UNKNOWN_FORMAT
    assert "not torch.save's" in contents.defects[0].message


def _zip_with(path: Path, pickled: bytes, *extra: str) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/version", "3\n")
        for name in extra:
            archive.writestr(name, b"")
    return path


def test_hostile_zips_are_named_dangerous_whatever_they_claim(tmp_path: Path) -> None:
    from harness.inspect import inspect_path

    marker = tmp_path / "ran"
    # os.system reached through torch.serialization's attributes (protocol 0 GLOBAL)
    dotted = b"\x80\x02ctorch.serialization\nos.system\nX\x04\x00\x00\x00true\x85R."
    # an empty code/ entry must not make a torch.save zip pass for TorchScript
    plain = pickle.dumps(checkpoints.Payload(marker), protocol=2)
    for path, name in (
        (_zip_with(tmp_path / "dotted.pt", dotted), "torch.serialization.os.system"),
        (_zip_with(tmp_path / "disguised.pt", plain, "archive/code/"), "posix.system"),
    ):
        found = inspect_path(path)
        assert found.contents.format is FileFormat.ZIP, path
        assert found.code_running == [name], path
        assert found.exit_code == 1, path
        assert found.advice[0].startswith("do not load this file"), path
    assert not marker.exists()


def test_hostile_structures_end_as_defects_not_crashes(tmp_path: Path) -> None:
    import time

    # a DAG of lists: 60 levels of two references to the next (2**60 paths to walk)
    chain: list[object] = []
    for _ in range(60):
        chain = [chain, chain]
    started = time.monotonic()
    contents = read_contents(_zip_with(tmp_path / "dag.pt", pickle.dumps(chain, protocol=2)))
    assert time.monotonic() - started < 10
    assert any("the same object as" in other.type for other in contents.others)
    huge = _zip_with(tmp_path / "bigint.pt", pickle.dumps({"n": 10**5000}, protocol=2))
    (number,) = read_contents(huge).others
    assert number.type == "int"
    assert len(number.value) <= 80
    deep = b"\x80\x02)" + b"\x85" * 1000 + b"."  # () wrapped in a 1-tuple 1000 times
    refused = read_contents(_zip_with(tmp_path / "deep.pt", deep))
    assert refused.defects[0].kind is DefectKind.CORRUPT_PICKLE
    assert "nested" in refused.defects[0].message


class _Lists(torch.nn.Module):
    """A module whose TorchScript pickle names torch.jit._pickle.build_intlist."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = [1, 2, 3]
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out * len(self.sizes)


def test_torchscripts_own_builders_are_no_danger(tmp_path: Path) -> None:
    from harness.inspect import INTACT, inspect_path

    path = tmp_path / "lists.pt"
    checkpoints.quiet(lambda: torch.jit.save(torch.jit.script(_Lists()), str(path)))
    found = inspect_path(path)
    assert "torch.jit._pickle.build_intlist" in found.contents.globals
    assert found.code_running == []
    assert found.contents.refused == []
    assert found.exit_code == INTACT, found.describe()
    assert "DANGER" not in found.describe()
    assert "torch.jit.load" in " ".join(found.advice)
