"""Checkpoints written by older torch versions (tests/data/corpus, made by its generate.py),
loaded by the torch under test: every tensor bitwise as recorded, in both file formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from harness.worker.fingerprint import fingerprint, nested_digests
from harness.worker.models import build
from harness.worker.training import resume

CORPUS = Path(__file__).parent.parent.parent / "data" / "corpus"
ENTRIES = [
    (folder.name, name, entry)
    for folder in sorted(CORPUS.glob("torch-*"))
    for name, entry in json.loads((folder / "manifest.json").read_text())["files"].items()
]


def test_the_corpus_is_there() -> None:
    versions = {version for version, _, _ in ENTRIES}
    assert "torch-2.13.0" in versions
    assert {entry["serialization"] for _, _, entry in ENTRIES} == {"zip", "legacy"}


@pytest.mark.parametrize(
    ("version", "name", "entry"), ENTRIES, ids=[f"{v}/{n}" for v, n, _ in ENTRIES]
)
def test_older_checkpoints_load_bitwise(version: str, name: str, entry: dict[str, Any]) -> None:
    path = CORPUS / version / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    state = torch.load(path, weights_only=True)
    assert nested_digests(state) == entry["tensors"]
    model = build(entry["model"], seed=1)
    if entry["kind"] == "weights":
        consume_prefix_in_state_dict_if_present(state, "module.")
        model.load_state_dict(state)
        loaded = {key: value["digest"] for key, value in fingerprint(model).items()}
        recorded = {key.removeprefix("module."): d for key, d in entry["tensors"].items()}
        assert loaded == recorded
    else:
        resume(model, state, "adam_onecycle", entry["model"])  # runs under the current torch
