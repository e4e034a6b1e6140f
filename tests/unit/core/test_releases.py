"""Which torch releases a session installs, and whether a pip constraint caps one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.core.releases import baseline_is_kept, cap_of, exceeds, pinned_version, release

# The constraints file of a machine whose pip configuration caps torch (as the development
# machines' does).
CONSTRAINTS = """# These releases lie on this machine's disk.
torch<=2.14.1
torchvision<=0.29.1
"""


@pytest.mark.parametrize(
    ("given", "torch", "torchvision"),
    [
        ("2.14.1", "torch==2.14.1", "torchvision==0.29.1"),
        ("2.13.0", "torch==2.13.0", "torchvision==0.28.0"),
        ("2.6.0", "torch==2.6.0", "torchvision==0.21.0"),
        ("2.4.1", "torch==2.4.1", "torchvision==0.19.1"),
        ("2.15.0", "torch==2.15.0", None),  # newer than every torchvision known
        ("torch==2.14.1 torchvision==0.29.1", "torch==2.14.1", "torchvision==0.29.1"),
        ("torch==2.15.0", "torch==2.15.0", None),
    ],
)
def test_a_release_names_its_torch_and_the_torchvision_built_for_it(
    given: str, torch: str, torchvision: str | None
) -> None:
    chosen = release(given)
    assert (chosen.torch, chosen.torchvision) == (torch, torchvision)
    assert chosen.requirements == [torch] + ([torchvision] if torchvision else [])
    assert bool(chosen.without_torchvision) is (torchvision is None)


def test_a_release_without_torchvision_says_its_vision_cells_are_not_run() -> None:
    assert release("2.15.0").without_torchvision == (
        "no torchvision is known for torch==2.15.0: the vision models' cells are not run"
    )


@pytest.mark.parametrize("given", ["banana", "torchvision==0.29.1", "torch==2.1 torch==2.2", ""])
def test_what_is_not_a_release_is_named(given: str) -> None:
    with pytest.raises(ValueError, match="give a torch version"):
        release(given)


def test_a_cap_in_a_constraints_file_is_found_and_compared() -> None:
    cap = cap_of(CONSTRAINTS, "torch")
    assert cap == "torch<=2.14.1"
    assert cap_of(CONSTRAINTS, "torchvision") == "torchvision<=0.29.1"
    assert cap_of("numpy<2\n", "torch") is None
    assert exceeds("2.15.0", cap)
    assert not exceeds("2.14.1", cap)
    assert not exceeds("2.14.1+cu130", cap)
    assert not exceeds("2.4.1", cap)
    assert exceeds("2.15.0", "torch<2.15")
    assert not exceeds("2.14.9", "torch<2.15")
    assert pinned_version("torch==2.15.0") == "2.15.0"
    assert pinned_version("torch>=2.1") is None


def test_the_older_releases_run_is_reused_only_where_it_is_whole_and_its_saves_kept(
    tmp_path: Path,
) -> None:
    out, saved = tmp_path / "results-upgrade-2.14.1.jsonl", tmp_path / "saved"
    environment = {"torch": "2.14.1+cu130", "git_commit": "abc"}
    end = {"kind": "end", "cells_run": 1}
    out.write_text(json.dumps(environment) + "\n" + json.dumps(end) + "\n")
    assert not baseline_is_kept(out, saved, "torch==2.14.1", "abc")  # its checkpoints are gone
    (saved / "artifacts").mkdir(parents=True)
    assert baseline_is_kept(out, saved, "torch==2.14.1", "abc")
    assert not baseline_is_kept(out, saved, "torch==2.14.1", "def")  # another commit
    assert not baseline_is_kept(out, saved, "torch==2.13.0", "abc")  # another release
    out.write_text(json.dumps(environment) + "\n")  # interrupted: no end line
    assert not baseline_is_kept(out, saved, "torch==2.14.1", "abc")
