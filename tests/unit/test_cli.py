from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.core.jobs import Job, JobRun
from harness.core.results import read_results
from harness.launchers import Launcher, LauncherBroken
from harness.run.artifacts import ArtifactStore
from harness.run.jobs import JobFactory
from harness.run.options import RunOptions
from harness.run.planning import plan_matrix
from harness.run.runner import CellRunner
from harness.run.usecase import MatrixWork
from tests.unit.core.test_results import result, write

SCENARIO = """
[[scenario]]
name = "tiny"
models = ["trap"]
save_layouts = ["dp"]
load_layouts = ["single"]
formats = ["weights"]
recipes = ["strip_prefix", "slice_prefix", "unfixed_prefix"]
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    return path


def test_list_prints_one_id_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    ids = capsys.readouterr().out.splitlines()
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
    assert all(line.startswith("model=") for line in ids)


def test_list_explain_gives_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--explain", "-k", "model=resnet18-"]) == 0
    out = capsys.readouterr().out
    assert "# 30 cells; " in out
    assert "#     recipe=whole_module needs load in {single}, got dp [prefix-recipes]" in out


def test_inventory_and_simulated_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "--simulate-gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED inventory: not GPU evidence" in out
    assert "GPU 1: simulated" in out
    assert main(["inventory", "--json", "--simulate-gpus", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"] == "none"
    assert main(["list", "--simulate-gpus", "4", "--visibility", "minimal"]) == 0
    ids = capsys.readouterr().out.splitlines()
    assert "model=trap-save=dp[0,1,2,3]-load=dp[0,1,2,3]-fmt=weights-recipe=as_saved" in ids
    # every save sees a GPU, but the cells of the CPU scenarios: distributed layouts' ranks with
    # gloo at every world size, and the every-layout-pair scenario that pairs them with the others
    on_cpu = ("=fsdp2x", "=fsdp2[", "=tpx", "=hsdp[", "=ddpx", "recipe=full_state_dict")
    assert not any("[cpu]" in i.split("-load=")[0] for i in ids if not any(d in i for d in on_cpu))
    assert main(["list", "--simulate-gpus", "4", "--count"]) == 0
    counts = capsys.readouterr().out
    assert "# 4 GPU(s) (simulated)" in counts
    assert "minimal       11 subsets" in counts


def test_a_bad_policy_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--visibility", "sample:x"]) == 2
    assert "--visibility 'sample:x'" in capsys.readouterr().err


def test_errors_name_the_input_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO.replace('"trap"', '"vgg"'))
    assert main(["list", "--scenarios", str(bad)]) == 2
    assert "ckpt-matrix list: error: " in capsys.readouterr().err
    assert main(["list", "-k", "no-such-cell"]) == 2
    assert "match -k 'no-such-cell'" in capsys.readouterr().err
    assert main(["run", "--jobs", "0", "-k", "model=trap-"]) == 2
    assert "--jobs 0: must be at least 1" in capsys.readouterr().err
    assert main(["run", "--gpu-slots", "0", "-k", "model=trap-"]) == 2
    assert "--gpu-slots 0: must be at least 1" in capsys.readouterr().err


def test_merge_writes_one_file_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = write(tmp_path / "runner-a.jsonl", {"torch": "2.14.1"}, result())
    two = write(tmp_path / "runner-b.jsonl", {"torch": "2.14.1"}, result("strip_prefix"))
    out = tmp_path / "merged.jsonl"
    assert main(["merge", str(out), str(one), str(two)]) == 0
    assert "2 cells from 2 files" in capsys.readouterr().out
    assert len(read_results(out).results) == 2
    assert main(["merge", str(out), str(one)]) == 2
    assert "merged.jsonl exists; pass --overwrite" in capsys.readouterr().err
    assert main(["merge", str(out), str(one), str(one)]) == 2  # --overwrite not given
    assert main(["merge", "--overwrite", str(out), str(one), str(one)]) == 2
    assert "is in both" in capsys.readouterr().err
    assert len(read_results(out).results) == 2  # a refused merge leaves OUT as it was


def test_a_one_gpu_and_a_four_gpu_runner_merge_once_the_larger_takes_min_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/certify.md's workflows: each runner kind runs the matrix, a last job merges the files
    # CPU cells, one GPU's and more, few enough to write (each result line is fsynced)
    some = "model=trap- and fmt=weights and (recipe=strip_prefix- or recipe=full_state_dict)"
    some += " and not compile and not checkpoint"

    def runner(name: str, gpus: int, min_gpus: int = 0) -> Path:
        given = ["--simulate-gpus", str(gpus), "--min-gpus", str(min_gpus)]
        assert main(["list", "-k", some, *given]) == 0
        listed = capsys.readouterr().out.splitlines()
        options = RunOptions(select=some, simulate_gpus=gpus, min_gpus=min_gpus)
        cells = plan_matrix(options).cells
        assert [cell.id for cell in cells] == listed
        ran = [replace(result(), cell=cell) for cell in cells]
        return write(tmp_path / f"{name}.jsonl", {"torch": "2.14.1"}, *ran)

    one, four = runner("gpu-1x", 1), runner("gpu-4x", 4)
    out = tmp_path / "merged.jsonl"
    assert main(["merge", str(out), str(one), str(four)]) == 2  # the 4-GPU run has them all
    assert "unless given --min-gpus (one more than the smaller runner's GPUs" in (
        capsys.readouterr().err
    )
    larger = runner("gpu-4x-min2", 4, min_gpus=2)
    assert main(["merge", str(out), str(one), str(larger)]) == 0
    assert "cells from 2 files" in capsys.readouterr().out
    # three kinds: each one more than the GPUs of the next smaller
    two, largest = runner("gpu-2x-min2", 2, min_gpus=2), runner("gpu-4x-min3", 4, min_gpus=3)
    three = tmp_path / "three.jsonl"
    assert main(["merge", str(three), str(one), str(two), str(largest)]) == 0
    ones, largers = read_results(one).results, read_results(larger).results
    assert len(read_results(out).results) == len(ones) + len(largers)
    assert {r.cell.gpus for r in ones} == {0, 1}
    assert {r.cell.gpus for r in largers} == {2, 4}  # pairs, and all four
    assert main(["list", "-k", some, "--simulate-gpus", "1", "--min-gpus", "2"]) == 2
    assert "--min-gpus 2: no cell needs that many GPUs (this machine gives 1" in (
        capsys.readouterr().err
    )
    assert main(["list", "--min-gpus", "-1"]) == 2
    assert "--min-gpus -1: must be 0 or more" in capsys.readouterr().err
    # the machine has the GPUs, the policy's subsets are too small: the fix is the policy
    wide = ["-k", some, "--simulate-gpus", "5", "--min-gpus", "5", "--visibility", "pairs"]
    assert main(["list", *wide]) == 2
    assert (
        "(this machine gives 5; its cells see at most 2); lower it, or choose a --visibility"
        in (capsys.readouterr().err)
    )
    # --count goes on through every policy, a policy without such cells counting none
    legacy = "model=trap- and fmt=weights and recipe=as_saved and ser=legacy"
    few = [legacy, "--simulate-gpus", "3", "--min-gpus", "3"]
    assert main(["list", "--count", "-k", *few]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert list(rows) == ["minimal", "pairs", "all:2", "all:3", "sample:8", "sample:32"]
    assert rows["pairs"].endswith(" 0 cells")  # saved and loaded under one subset: a pair
    assert not rows["minimal"].endswith(" 0 cells")  # minimal holds all three together


def test_run_refuses_to_replace_results_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text("precious\n")
    assert main(["run", "--out", str(out), "-k", "model=trap-"]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert out.read_text() == "precious\n"


def test_keeping_saves_needs_the_workdir_that_holds_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    assert main(["run", "--out", str(out), "--keep-saves", "-k", "model=trap-"]) == 2
    assert "--keep-saves loads the checkpoints an earlier run left in its --workdir" in (
        capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.slow
def test_run_writes_results_and_resumes(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    assert (
        main(
            [
                "run",
                "--scenarios",
                str(scenario),
                "--out",
                str(out),
                "-k",
                "strip_prefix",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    first = read_results(out)
    assert [r.cell.recipe for r in first.results] == ["strip_prefix"]
    assert first.environment["launcher"] == "zygote"  # the default
    assert first.environment["shard"] is None
    assert first.environment["torch"]
    assert first.environment["gpus"] == "none"
    # resume: only the cells not yet in the file run, appended after the first
    assert (
        main(["run", "--scenarios", str(scenario), "--out", str(out), "--resume", "--jobs", "2"])
        == 0
    )
    captured = capsys.readouterr()
    assert "2 cells to run (1 already in" in captured.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # each run (the first and the resume) ends with its own "end" line
    assert [line["kind"] for line in lines] == [
        "environment",
        "cell",
        "end",
        "cell",
        "cell",
        "end",
    ]
    assert lines[-1]["cells_run"] == 2
    cells = [line for line in lines if line["kind"] == "cell"]
    outcomes = {line["cell"]["recipe"]: line["outcome"] for line in cells}
    assert outcomes == {"strip_prefix": "PASS", "slice_prefix": "PASS", "unfixed_prefix": "XFAIL"}
    assert "slice_prefix" in captured.out
    assert "Fragile" in captured.out
    # a resume that plans fewer cells than the file holds would mix two runs: refused
    kept = out.read_text()
    narrower = ["run", "--scenarios", str(scenario), "--out", str(out), "--resume", "-k", "slice"]
    assert main(narrower) == 2
    err = capsys.readouterr().err
    assert "holds 2 cell(s) this run does not plan (first model=trap-save=dp[cpu]" in err
    assert "resume it with the options it was run with" in err
    assert out.read_text() == kept


def test_list_shards_are_disjoint_and_cover_the_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    whole = capsys.readouterr().out.splitlines()
    parts = []
    for k in (1, 2, 3):
        assert main(["list", "--shard", f"{k}/3"]) == 0
        parts.append(capsys.readouterr().out.splitlines())
    assert sorted(cell for part in parts for cell in part) == sorted(whole)
    assert all(parts)
    assert all(set(a).isdisjoint(b) for a in parts for b in parts if a is not b)


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["--shard", "5/4"], {}, "--shard '5/4'"),
        (["--shard", "x"], {}, "--shard 'x'"),
        (["--shard", "slurm"], {"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID='x'"),
        (["--visibility", "some"], {}, "--visibility 'some'"),
    ],
)
def test_bad_options_are_usage_errors_naming_their_source(
    argv: list[str],
    environ: dict[str, str],
    named: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["list", *argv]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_three_shards_merged_certify_against_the_whole_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 14 cells in 6 saves (each format, a legacy serialization, two trainings): 3 shards of them
    select = ["-k", "model=trap_module-save=dp[cpu]-load=single"]
    whole = tmp_path / "whole.jsonl"
    assert main(["run", *select, "--out", str(whole)]) == 0
    parts = [tmp_path / f"part{k}.jsonl" for k in (1, 2, 3)]
    for k, part in enumerate(parts, start=1):
        assert main(["run", *select, "--shard", f"{k}/3", "--out", str(part)]) == 0
        assert read_results(part).environment["shard"]["index"] == k
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", str(merged), *map(str, parts[:2])]) == 2  # a shard missing
    assert "3/3 is missing" in capsys.readouterr().err
    assert main(["merge", str(merged), *map(str, parts)]) == 0
    assert main(["diff", str(whole), str(merged)]) == 0
    assert len(read_results(merged).results) == len(read_results(whole).results) >= 14


@dataclass
class Broken:
    """A launcher whose zygote has died twice."""

    def launch(self, job: Job) -> JobRun:
        raise LauncherBroken("the zygote died 2 times, so the run stops: exited with code -9")

    def stop_all(self) -> None:
        pass


def test_a_broken_launcher_stops_the_run_with_exit_3_and_an_end_line(
    scenario: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_runner(
        work: MatrixWork, launcher: Launcher, workdir: Path, environment: dict[str, Any]
    ) -> CellRunner:
        factory = JobFactory(workdir=workdir)
        return CellRunner(
            factory=factory,
            launcher=Broken(),
            store=ArtifactStore(factory, Broken()),
            torch_version=(2, 14),
        )

    monkeypatch.setattr(MatrixWork, "runner", broken_runner)
    monkeypatch.setattr(MatrixWork, "environment", lambda *_: {"torch": "2.14.1", "shard": None})
    out = tmp_path / "results.jsonl"
    assert main(["run", "--scenarios", str(scenario), "--out", str(out)]) == 3
    assert "the run stopped: the zygote died 2 times" in capsys.readouterr().err
    ends = read_results(out).ends
    assert len(ends) == 1
    assert "died 2 times" in ends[0]["stopped"]


def test_model_replaces_the_models_the_scenarios_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--model", "my_pkg.models:build", "-k", "recipe=as_saved-"]) == 0
    ids = capsys.readouterr().out.splitlines()
    assert ids
    assert all(i.startswith("model=my_pkg.models:build-") for i in ids)
    assert main(["list", "--model", "vgg"]) == 2
    assert "--model vgg: unknown model 'vgg'; the zoo has" in capsys.readouterr().err


def test_inspect_exit_codes_json_and_the_loud_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.inspect import checkpoints

    good = checkpoints.zip_file(checkpoints.fresh(tmp_path, "good"))
    needs = checkpoints.train_state_file(checkpoints.fresh(tmp_path, "needs"))
    marker = tmp_path / "payload-ran"
    hostile = checkpoints.hostile(marker)(checkpoints.fresh(tmp_path, "hostile"))
    broken = checkpoints.truncated(checkpoints.fresh(tmp_path, "broken"))
    assert main(["inspect", str(good)]) == 0
    assert f"{good}: intact" in capsys.readouterr().out
    assert main(["inspect", str(needs)]) == 1
    assert main(["inspect", "--json", str(good), str(hostile)]) == 1
    captured = capsys.readouterr()
    first, second = (json.loads(line) for line in captured.out.splitlines()[-2:])
    assert (first["exit_code"], second["exit_code"]) == (0, 1)
    assert second["code_running"] == ["posix.system"]
    assert f"WARNING: {hostile} names posix.system" in captured.err
    assert main(["inspect", str(good), str(broken)]) == 2
    assert "truncated" in capsys.readouterr().out
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "reads_a_line"),
    [
        # 195 kB, three times a pipe's buffer: the writer is still writing when the reader leaves
        pytest.param(["list", "--explain"], True, id="reader-leaves-after-one-line"),
        pytest.param(["list"], False, id="reader-gone-before-the-first-write"),
    ],
)
def test_list_into_a_pipe_closed_early_stops_quietly(args: list[str], reads_a_line: bool) -> None:
    """`ckpt-matrix list | head`: no error, no traceback, and the status of a process that
    SIGPIPE ended (128 + 13), as `seq 1000000 | head` gives."""
    read_end, write_end = os.pipe()
    if not reads_a_line:
        os.close(read_end)
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args], stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    if reads_a_line:
        with os.fdopen(read_end, "rb") as reader:
            assert reader.readline().startswith(b"model=")
    _, stderr = process.communicate(timeout=120)
    assert stderr.decode() == ""
    assert process.returncode == 141
