"""Which torch releases a session installs, and whether a pip constraint caps one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.core.matrix import expand
from harness.core.releases import (
    LADDER_COLUMNS,
    cap_of,
    exceeds,
    ladder_column,
    ladder_plan,
    ladder_selection,
    ladder_unsupported,
    pinned_version,
    release,
    why_not_reused,
)
from harness.core.scenarios import load_scenarios

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


def test_the_older_releases_run_is_reused_only_where_it_stands_for_the_run_to_make(
    tmp_path: Path,
) -> None:
    out, saved = tmp_path / "results-upgrade-2.14.1.jsonl", tmp_path / "saved"
    words = ["run", "--workdir", str(saved), "--out", str(out), "-k", "fsdp2"]
    gpu = {"index": 0, "uuid": "GPU-1", "name": "H100", "memory_mib": 81559}
    machine = {"gpus": [gpu], "outer_cuda_visible_devices": None, "driver_version": "580.1"}
    environment = {
        "torch": "2.14.1+cu130",
        "git_commit": "abc",
        "argv": [".nox/releases/2.14.1/bin/ckpt-matrix", *words],
        **machine,
    }
    end = {"kind": "end", "cells_run": 1}

    def why(torch: str = "torch==2.14.1", commit: str | None = "abc", **changes: Any) -> Any:
        given = {"arguments": words, "machine": machine, **changes}
        return why_not_reused(out, saved, torch, commit, given["arguments"], given["machine"])

    assert why() == f"no {out} yet"
    out.write_text(json.dumps(environment) + "\n" + json.dumps(end) + "\n")
    assert why() == f"its checkpoints are gone from {saved}"
    (saved / "artifacts").mkdir(parents=True)
    assert why() is None
    assert why(commit="def") == f"{out} was run at abc, this is def"
    assert why(commit=None) == "the working tree has uncommitted changes"
    assert why("torch==2.13.0") == f"{out} is a run of torch 2.14.1+cu130, not 2.13.0"
    assert why("torch==2.14.10") is not None  # a version is matched whole
    # another -k, or none: other cells, which a reused run would not hold (the certification
    # would call them lost, or not crossed)
    assert why(arguments=words[:-2]) == f"{out} was run with other options"
    assert why(arguments=[*words[:-1], "dcp"]) == f"{out} was run with other options"
    # other GPUs plan other cells; another driver is what an upgrade of it would certify
    for key, other in (
        ("gpus", "none"),
        ("outer_cuda_visible_devices", "1"),
        ("driver_version", "590.2"),
    ):
        assert why(machine={**machine, key: other}) == (
            f"{out} was run with another {key.replace('_', ' ')}"
        )
    assert why(machine={}) is not None  # the machine could not be read
    for ended in ("", json.dumps({**end, "stopped": "interrupted by SIGINT"}) + "\n"):
        out.write_text(json.dumps(environment) + "\n" + ended)  # killed, or stopped
        assert why() == f"{out} is a run that did not finish"
    # the recorded version is matched whole too: 2.14.10's run does not stand for 2.14.1's
    recorded = {**environment, "torch": "2.14.10+cu130"}
    out.write_text(json.dumps(recorded) + "\n" + json.dumps(end) + "\n")
    assert why() == f"{out} is a run of torch 2.14.10+cu130, not 2.14.1"


# The release ladder's planning: which releases, which columns each can save, which cells run.


def test_the_ladder_saves_under_each_older_release_and_loads_under_the_last() -> None:
    older, newest = ladder_plan(["2.4.1", "torch==2.6.0 torchvision==0.21.0", "2.15.0"])
    assert [r.torch for r in older] == ["torch==2.4.1", "torch==2.6.0"]
    # named by the version, whatever the requirement strings given
    assert [r.label for r in older] == ["2.4.1", "2.6.0"]
    assert newest.torch == "torch==2.15.0"
    # the zoo's own models only: no release needs a torchvision
    assert all(r.torchvision is None for r in (*older, newest))


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["2.15.0"], "two or more releases"),
        (["2.6.0", "2.4.1"], "2.4.1 is given after 2.6.0: give the releases oldest first"),
        (["2.6.0", "2.6.0"], "2.6.0: given twice"),
        (["2.3.1", "2.15.0"], "torch 2.3.1: the ladder takes torch 2.4.0 or newer"),
        (["2.6", "2.15.0"], "give a torch version"),
        (["torch>=2.4,<2.5", "2.15.0"], "the ladder needs each release pinned to one version"),
        (["torch==2.15.0", "2.15.0"], "2.15.0: given twice"),
    ],
)
def test_a_ladder_that_cannot_be_climbed_is_refused_naming_why(
    given: list[str], named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        ladder_plan(given)


def test_a_version_the_ladder_cannot_read_or_take_is_refused() -> None:
    for version in ("unknown", "2.3.1", "1.13.1"):
        with pytest.raises(ValueError, match=re.escape(version)):
            ladder_unsupported(version)
    assert set(ladder_unsupported("2.4")) == set(ladder_unsupported("2.4.0"))
    assert ladder_unsupported("2.7") == {}


def test_releases_before_fsdp2_runs_on_the_cpu_save_no_dcp_and_say_why() -> None:
    for version in ("2.4.1", "2.6.0"):
        missing = ladder_unsupported(version)
        assert sorted(missing) == ["dcp fsdp2x1", "dcp fsdp2x2"]
        assert "pytorch#145935" in missing["dcp fsdp2x1"]
        assert ladder_selection(version) == "not fmt=dcp"
    for version in ("2.7.0", "2.8.0", "2.15.0"):
        assert ladder_unsupported(version) == {}
        assert ladder_selection(version) is None


def test_every_ladder_cell_falls_in_a_column_and_a_selection_leaves_out_just_its_columns() -> None:
    scenarios = load_scenarios(Path(__file__).parents[3] / "scenarios" / "ladder")
    cells = expand(scenarios).cells
    column = {
        c.id: ladder_column(
            str(c.format), c.serialization, c.recipe, str(c.save_layout), c.save_world
        )
        for c in cells
    }
    # every column of the table has cells, and no cell falls outside the table
    assert set(column.values()) == set(LADDER_COLUMNS)
    kept = {c.id for c in expand(scenarios, select=ladder_selection("2.6.0")).cells}
    left_out = {c.id for c in cells} - kept
    assert left_out == {i for i, name in column.items() if name in ladder_unsupported("2.6.0")}
    assert left_out
