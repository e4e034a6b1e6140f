"""Checkpoints that PyPI packages ship (tests/data/real_files, manifest.toml): ``inspect`` lists
exactly the tensors their own loaders give, where they were saved, with no false alarm; ``golden
record`` then ``golden verify`` pass on this machine, GPU or not."""

from __future__ import annotations

import hashlib
import pickletools
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.inspect import FileFormat, inspect_path

ROOT = Path(__file__).parents[2] / "data" / "real_files"
MANIFEST: list[dict[str, Any]] = tomllib.loads((ROOT / "manifest.toml").read_text())["file"]
Listed = list[tuple[str, str, tuple[int, ...]]]


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _flat(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    found: dict[str, torch.Tensor] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return found


def _loaded(entry: dict[str, Any]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The file's tensors as its own loader gives them, and the saved locations torch reads."""
    path = ROOT / entry["path"]
    if entry["format"] == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, set()  # noqa: SIM118
    locations: set[str] = set()

    def record(storage: Any, location: str) -> Any:
        locations.add(location)
        return storage  # stays on the CPU

    if entry["format"] == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        return dict(module.state_dict()), {"cpu"}  # torch.jit.load keeps no saved location
    return _flat(torch.load(path, map_location=record, weights_only=True)), locations


@pytest.fixture(scope="module", params=MANIFEST, ids=[entry["path"] for entry in MANIFEST])
def entry(request: pytest.FixtureRequest) -> dict[str, Any]:
    found: dict[str, Any] = request.param
    return found


def test_the_corpus_is_as_recorded(entry: dict[str, Any]) -> None:
    path = ROOT / entry["path"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert (path.parent / "LICENSE").is_file(), "every package's licence text is kept beside it"
    assert path.stat().st_size < 2_500_000
    if entry["format"] == "torch_legacy":
        with open(path, "rb") as handle:
            opcodes = {op.name for _ in range(5) for op, _, _ in pickletools.genops(handle)}
        assert ("SHORT_BINSTRING" in opcodes) is entry["python2"]


def test_the_corpus_covers_what_users_bring() -> None:
    assert {entry["format"] for entry in MANIFEST} == {
        "torch_legacy",
        "torch_zip",
        "torchscript",
        "safetensors",
    }
    assert any(entry["python2"] for entry in MANIFEST)
    assert any("cuda:0" in entry["saved_at"] for entry in MANIFEST)
    assert len({entry["package"] for entry in MANIFEST}) >= 5


def test_inspect_lists_what_the_files_own_loader_gives(
    entry: dict[str, Any], recwarn: pytest.WarningsRecorder
) -> None:
    found = inspect_path(ROOT / entry["path"], gpus=0)
    text = found.describe()
    assert str(found.contents.format) == entry["format"]
    assert found.exit_code == entry["inspect_exit"], text
    assert not found.contents.defects, text
    assert found.code_running == [], text
    assert "DANGER" not in text
    loaded, locations = _loaded(entry)
    listed = {t.path: (t.dtype, t.shape) for t in found.contents.tensors}
    expected = {name: (_dtype(t), tuple(t.shape)) for name, t in loaded.items()}
    if found.contents.format is FileFormat.TORCHSCRIPT:
        # the archive also holds the module's tensors that are attributes, not state
        module = torch.jit.load(str(ROOT / entry["path"]))  # type: ignore[no-untyped-call]
        extra = sorted(set(listed) - set(expected))
        for name in extra:
            attribute: Any = module
            for part in name.split("."):
                attribute = getattr(attribute, part)
            assert isinstance(attribute, torch.Tensor), name
            assert (_dtype(attribute), tuple(attribute.shape)) == listed[name]
        listed = {name: listed[name] for name in listed if name not in extra}
    assert listed == expected
    if entry["format"] != "safetensors":  # safe_open gives its keys sorted, not as stored
        assert list(listed) == list(expected)  # in the file's order
    if entry["format"] in ("torch_legacy", "torch_zip"):
        assert locations == set(entry["saved_at"])
        assert {t.location for t in found.contents.tensors} == locations
    if "cuda:0" in entry["saved_at"]:
        assert any("map_location='cpu'" in advice for advice in found.advice)


@pytest.mark.slow
def test_golden_record_then_verify_pass_here(tmp_path: Path) -> None:
    from harness.cli import main
    from harness.core.outcomes import Outcome
    from harness.core.results import read_results

    files = [str(ROOT / entry["path"]) for entry in MANIFEST]
    golden = tmp_path / "golden.jsonl"
    assert main(["golden", "record", *files, "--out", str(golden), "--jobs", "2"]) == 0
    recorded = {Path(r.cell.model).name: r for r in read_results(golden).results}
    assert {r.outcome for r in recorded.values()} == {Outcome.PASS}
    for entry in MANIFEST:
        observed = recorded[Path(entry["path"]).name].observed or {}
        saved = {t["saved"] for t in observed["tensors"].values()}
        if entry["format"] in ("torch_legacy", "torch_zip"):
            assert saved == set(entry["saved_at"]), entry["path"]
        if "cuda:0" in entry["saved_at"] and not torch.cuda.is_available():
            assert observed["map_location"] == "cpu"
            assert {t["device"] for t in observed["tensors"].values()} == {"cpu"}
            assert "saved at cuda:0, loaded on cpu" in recorded[Path(entry["path"]).name].reason
    # verify twice with the default output: neither refuses, neither replaces the other
    assert main(["golden", "verify", str(golden), "--jobs", "2"]) == 0
    assert main(["golden", "verify", str(golden), "--jobs", "2"]) == 0
    for name in ("golden-verify.jsonl", "golden-verify-2.jsonl"):
        results = read_results(tmp_path / name).results
        assert {r.outcome for r in results} == {Outcome.PASS}, name
        assert len(results) == len(MANIFEST)
