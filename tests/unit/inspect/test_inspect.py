"""``inspect_path``: every format's exit code, and every bad input named by its own defect with
the file and the fix, its payload never run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.inspect import BROKEN, INTACT, NEEDS_GLOBALS, inspect_path

from . import checkpoints


@pytest.mark.parametrize("fmt", sorted(checkpoints.GOOD))
def test_every_good_format_is_intact(tmp_path: Path, fmt: str) -> None:
    found = inspect_path(checkpoints.GOOD[fmt](tmp_path))
    assert str(found.contents.format) == fmt
    assert found.exit_code == INTACT, found.describe()
    assert len(found.contents.tensors) == 7
    assert json.loads(json.dumps(found.to_json()))["exit_code"] == INTACT


def test_needs_globals_is_exit_1_with_advice(tmp_path: Path) -> None:
    found = inspect_path(checkpoints.train_state_file(tmp_path))
    assert found.exit_code == NEEDS_GLOBALS
    assert "safe_globals([argparse.Namespace])" in found.describe()


def test_bad_inputs_each_get_their_own_defect(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    messages = set()
    for name, (maker, kind) in checkpoints.bad_inputs(marker).items():
        path = maker(checkpoints.fresh(tmp_path, name))
        found = inspect_path(path)
        text = found.describe()
        if kind is None:  # intact, but names a global that runs code
            assert found.exit_code == NEEDS_GLOBALS, name
            assert found.code_running == ["posix.system"], name
            assert "DANGER: posix.system" in text, name
            assert "do not load this file" in text, name
            continue
        assert found.exit_code == BROKEN, name
        defect = found.contents.defects[0]
        assert defect.kind is kind, (name, text)
        assert str(path) in defect.where, name
        assert f"fix: {kind.fix}" in text, name
        messages.add(defect.describe())
    assert not marker.exists()
    assert len(messages) == 10  # ten broken inputs, ten distinct errors
