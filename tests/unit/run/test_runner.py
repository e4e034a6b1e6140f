from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.jobs import Job, JobRun
from harness.core.outcomes import ErrorClass, Outcome
from harness.core.results import ResultsWriter, read_results
from harness.core.zoo import ModelTraits
from harness.run.artifacts import ArtifactStore
from harness.run.jobs import JobFactory
from harness.run.runner import CellRunner, interleave_by_artifact, run_cells
from tests.unit.fake_launcher import RecordingLauncher, crash


def cell(save: Layout, load: Layout, recipe: str) -> Cell:
    return Cell(
        model="trap", save_layout=save, load_layout=load, format=Format.WEIGHTS, recipe=recipe
    )


DP_SINGLE = cell(Layout.DP, Layout.SINGLE, "strip_prefix")
DP_DP = cell(Layout.DP, Layout.DP, "strip_prefix")
SINGLE = cell(Layout.SINGLE, Layout.SINGLE, "as_saved")


def runner(tmp_path: Path, launcher: RecordingLauncher, *, torchvision: bool = True) -> CellRunner:
    factory = JobFactory(workdir=tmp_path / "work")
    return CellRunner(
        factory=factory,
        launcher=launcher,
        store=ArtifactStore(factory, launcher),
        torch_version=(2, 14),
        torchvision=torchvision,
    )


def test_a_crashed_save_fails_its_cells_and_the_run_goes_on(tmp_path: Path) -> None:
    launcher = RecordingLauncher(behaviours={SINGLE.save_key.id: crash})
    out = tmp_path / "results.jsonl"
    seen: list[tuple[str, int, int]] = []
    with ResultsWriter(out, {"torch": "2.14.1"}, resume=False) as writer:
        results = run_cells(
            [DP_SINGLE, SINGLE, DP_DP],
            runner(tmp_path, launcher),
            writer,
            jobs=2,
            progress=lambda r, n, total: seen.append((r.id, n, total)),
        )
    assert [r.id for r in results] == [DP_SINGLE.id, SINGLE.id, DP_DP.id]
    outcomes = {r.id: r.outcome for r in results}
    assert outcomes == {
        DP_SINGLE.id: Outcome.PASS,
        SINGLE.id: Outcome.ERROR,
        DP_DP.id: Outcome.PASS,
    }
    error = next(r for r in results if r.id == SINGLE.id)
    assert "killed by SIGSEGV" in error.reason
    assert error.error is not None
    assert error.error["phase"] == "save"
    # one save per artifact, one load per cell that has an artifact
    assert sorted(launcher.names()) == sorted(
        [DP_SINGLE.save_key.id, SINGLE.save_key.id, DP_SINGLE.id, DP_DP.id]
    )
    assert sorted(n for _, n, _ in seen) == [1, 2, 3]
    assert {t for *_, t in seen} == {3}
    assert {r.id for r in read_results(out).results} == set(outcomes)


def test_a_harness_bug_is_that_cells_error(tmp_path: Path) -> None:
    def broken(job: Job, _: object) -> JobRun:
        raise RuntimeError("harness bug")

    launcher = RecordingLauncher(behaviours={DP_SINGLE.id: broken})
    result = runner(tmp_path, launcher).run_cell(DP_SINGLE)
    assert result.outcome is Outcome.ERROR
    assert "the harness failed: RuntimeError: harness bug" in result.reason
    assert result.error is not None
    assert "Traceback" in result.error["failure"]


def test_interrupts_are_re_raised_and_stop_the_children(tmp_path: Path) -> None:
    def interrupted(job: Job, _: object) -> JobRun:
        raise KeyboardInterrupt

    launcher = RecordingLauncher(behaviours={DP_SINGLE.id: interrupted})
    with (
        ResultsWriter(tmp_path / "r.jsonl", {}, resume=False) as writer,
        pytest.raises(KeyboardInterrupt),
    ):
        run_cells([DP_SINGLE], runner(tmp_path, launcher), writer, jobs=1)
    assert launcher.stopped == 1


def test_interleave_spreads_cells_of_one_artifact() -> None:
    order = interleave_by_artifact([DP_SINGLE, DP_DP, SINGLE])
    assert order == [DP_SINGLE, SINGLE, DP_DP]


def test_a_model_whose_package_is_missing_is_skipped_with_its_reason(tmp_path: Path) -> None:
    launcher = RecordingLauncher()
    no_vision = runner(tmp_path, launcher, torchvision=False)
    resnet = Cell(
        model="resnet152",  # torchvision's own (the zoo's resnet18 is written without it)
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe="as_saved",
    )
    skipped = no_vision.run_cell(resnet)
    assert skipped.outcome is Outcome.SKIP
    assert "resnet152 needs torchvision" in skipped.reason
    assert no_vision.run_cell(SINGLE).outcome is Outcome.PASS  # the trap model needs none
    assert all("resnet152" not in name for name in launcher.names())


def test_a_users_model_is_judged_by_its_measured_traits(tmp_path: Path) -> None:
    launcher = RecordingLauncher()
    measured = runner(tmp_path, launcher)
    name = "my_pkg.models:build"
    mine = ModelTraits(top_level_module_attr=True, nested_module_dot=False, example_input=False)
    measured.traits = {name: mine}
    stripped = replace(cell(Layout.SINGLE, Layout.SINGLE, "strip_prefix_unwrapped"), model=name)
    # its own top-level 'module' is eaten by consume_prefix_in_state_dict_if_present
    assert measured.run_cell(stripped).expected.error is ErrorClass.KEY_MISMATCH
    resume = Cell(
        model=name,
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=Format.TRAIN_STATE,
        recipe="resume",
        training="sgd_steplr",
    )
    skipped = measured.run_cell(resume)
    assert skipped.outcome is Outcome.SKIP
    assert f"{name} gives no example_input" in skipped.reason
    assert all("train_state" not in job for job in launcher.names())


def test_a_users_model_whose_library_is_missing_is_skipped_with_its_reason(
    tmp_path: Path,
) -> None:
    launcher = RecordingLauncher()
    measured = runner(tmp_path, launcher)
    name = "my_pkg.models:build"
    why = f"{name} needs timm, which the workers' interpreter lacks (pip install timm ...)"
    measured.traits = {
        name: ModelTraits(top_level_module_attr=False, nested_module_dot=False, unavailable=why)
    }
    skipped = measured.run_cell(replace(SINGLE, model=name))
    assert skipped.outcome is Outcome.SKIP
    assert skipped.reason == why
    assert launcher.names() == []  # nothing was started for it


def test_the_plugin_runs_a_cell_once_per_run_and_reads_it_back_after(tmp_path: Path) -> None:
    from harness.plugin import run_once

    launcher = RecordingLauncher()
    first = run_once(runner(tmp_path, launcher), DP_SINGLE)
    # another runner on the same work folder (another xdist worker's): the recorded result
    other_worker = RecordingLauncher()
    again = run_once(runner(tmp_path, other_worker), DP_SINGLE)
    assert other_worker.names() == []  # nothing ran again
    assert again.to_json() == json.loads(json.dumps(first.to_json()))
    assert first.outcome is Outcome.PASS
    assert sorted(launcher.names()) == sorted([DP_SINGLE.save_key.id, DP_SINGLE.id])
    other = run_once(runner(tmp_path, launcher), DP_DP)  # another cell runs
    assert other.id == DP_DP.id
    assert DP_DP.id in launcher.names()
