"""A user's own model, named by its import path and found through PYTHONPATH, runs the shipped
scenarios from the command line: its traits are measured in a worker, recorded in the results,
and every cell ends as the oracle predicts from them (no FAIL, XPASS or ERROR)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from harness.core.axes import Layout, Wrapper
from harness.core.cell import layout_label
from harness.core.matrix import expand
from harness.core.results import read_results
from harness.core.scenarios import default_scenarios_dir, load_scenarios
from harness.core.selection import selector

from .covers import AXES, cheapest_cover, values

USER_MODELS = Path(__file__).parents[1] / "data" / "user_model"


def run(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(USER_MODELS)}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--out", str(out), *options],
        cwd=tmp_path,  # a directory of the user's, not this checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done, out


# What a model meets in a cell, and what the oracle reasons about with its traits: each recipe
# (its prefix rules, tied weights through safetensors, dropout without the generators' states),
# format, layout at each world size and wrapper where it is saved and where it is loaded,
# training regime, serialization, saved device and map_location policy.
USER_AXES = {
    **AXES,
    "save layout": lambda cell: layout_label(cell.save_layout, cell.save_world),
    "load layout": lambda cell: layout_label(cell.load_layout, cell.load_world),
    "save wrapper": lambda cell: cell.save_wrapper,
    "load wrapper": lambda cell: cell.load_wrapper,
    "training": lambda cell: cell.training,
    "serialization": lambda cell: cell.serialization,
    "saved on": lambda cell: cell.save_device,
    "map_location": lambda cell: cell.map_location,
}


def forked_s(layout: Layout, world: int, wrapper: Wrapper) -> float:
    """What a job forked from the zygote costs, as weights: a process, a rank each, and
    torch.compile."""
    seconds = 0.5 + (0.8 * world if layout.distributed else 0.0)
    return seconds + (1.5 if wrapper is Wrapper.COMPILE else 0.0)


@pytest.mark.slow
def test_a_users_model_runs_the_shipped_scenarios(tmp_path: Path) -> None:
    """A model as real ones are: constant buffers its constructor fixes, tied weights,
    attributes named ``module`` at the top and nested, integer buffers, dropout and a forward
    that returns a dict. Every cell ends as predicted, none ERROR.

    The shipped scenarios run with the model as each kind of cell once (a fifth of their cells,
    chosen by -k): every recipe, format, layout at each world size and wrapper, where it is
    saved and where it is loaded, training regime, serialization, saved device and map_location.
    The oracle's rules that read a model's traits are a recipe's, so each one meets the model;
    and the model is built, wrapped, saved and loaded in every layout. The other cells repeat
    these with other partners: the conformance matrix runs each of them with the zoo's models."""
    name = "ckpt_user_model:constants"
    scenarios = [replace(s, models=(name,)) for s in load_scenarios(default_scenarios_dir())]
    shipped = expand(scenarios, subsets=[]).cells
    cover = cheapest_cover(shipped, USER_AXES, forked_s)
    select = " or ".join(cell.id for cell in cover)
    kept = {cell.id for cell in shipped if selector(select)(cell.id)}  # ids that contain one
    done, out = run(tmp_path, "--model", name, "--jobs", "2", "-k", select)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    file = read_results(out)
    results = file.results
    assert file.environment["models"][name]["traits"] == {
        "top_level_module_attr": True,
        "nested_module_dot": True,
        "example_input": True,
        "tied": True,
        "parametrized": False,
        "stochastic": True,
        "integer_tensors": True,  # BatchNorm's num_batches_tracked, its int32 buffers
        "constants": ["counts", "position_ids"],
    }
    outcomes = Counter(str(r.outcome) for r in results)
    assert set(outcomes) == {"PASS", "XFAIL"}, outcomes
    assert {r.id for r in results} == kept
    assert all(r.cell.model == name for r in results)
    # every kind of cell of the shipped scenarios ran with the model
    ran = set().union(*(values(r.cell, USER_AXES) for r in results))
    assert ran == set().union(*(values(cell, USER_AXES) for cell in shipped))
    # the constant buffers are compared, named, and never make a cell an ERROR (a whole
    # pickled model is the loaded model itself: no fresh one to compare with)
    passed = [r for r in results if str(r.outcome) == "PASS" and r.cell.format != "whole"]
    assert passed
    assert all("['counts', 'position_ids']" in r.reason for r in passed)
    # its dropout: resumed without the generators it is caught, with them it passes
    without = [r for r in results if r.cell.recipe.endswith("resume_without_rng")]
    assert {r.cell.recipe for r in without} == {"resume_without_rng", "dcp_resume_without_rng"}
    assert {str(r.outcome) for r in without} == {"XFAIL"}
    resumed = [r for r in results if r.cell.recipe in ("resume", "dcp_resume")]
    assert {r.cell.recipe for r in resumed} == {"resume", "dcp_resume"}
    assert {str(r.outcome) for r in resumed} == {"PASS"}


@pytest.mark.slow
def test_a_model_without_an_example_input_still_compares_its_tensors(tmp_path: Path) -> None:
    # every format from one process to another (not each map_location and serialization again)
    single = "save=single[cpu]-load=single[cpu]- and not -map= and not -ser="
    done, out = run(tmp_path, "--model", "ckpt_user_plain:build", "-k", single)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = read_results(out).results
    by_outcome = Counter(str(r.outcome) for r in results)
    assert by_outcome["PASS"] > 0
    assert by_outcome["SKIP"] > 0  # the training-state cells: they train the model
    assert set(by_outcome) <= {"PASS", "XFAIL", "SKIP"}, by_outcome
    passed = [r for r in results if str(r.outcome) == "PASS"]
    assert all(
        "forward output not compared (the model gives no example_input)" in r.reason for r in passed
    )
    assert all((r.observed or {}).get("tensors", 0) >= 4 for r in passed)  # the tensors were


def test_a_model_that_cannot_be_built_stops_the_run_before_any_cell(tmp_path: Path) -> None:
    done, out = run(tmp_path, "--model", "ckpt_user_model:broken", "-k", "recipe=as_saved-")
    assert done.returncode == 2
    assert "model ckpt_user_model:broken: " in done.stderr
    assert "RuntimeError: the factory's own bug" in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_spawn_launcher_finds_the_users_module_too(tmp_path: Path) -> None:
    one = "save=single[cpu]-load=single[cpu]-fmt=weights-recipe=as_saved"
    only = f"{one} and not -map= and not -ser="  # not its map_location and legacy variants
    done, out = run(tmp_path, "--model", "ckpt_user_model:build", "--launcher", "spawn", "-k", only)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = read_results(out).results
    assert [r.id for r in results] == [f"model=ckpt_user_model:build-{one}"]
    assert all(str(r.outcome) in ("PASS", "XFAIL") for r in results), [
        r.describe() for r in results
    ]
