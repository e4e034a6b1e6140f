from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from harness.core.axes import Format, Layout, SaveVariant
from harness.core.cell import Cell, SaveKey
from harness.run.jobs import JobFactory, worker_env


def test_worker_env_replaces_an_outer_visibility() -> None:
    outer = {"CUDA_VISIBLE_DEVICES": "2,3", "PATH": "/bin"}
    assert worker_env((), outer)["CUDA_VISIBLE_DEVICES"] == ""
    assert worker_env((1, 0), outer)["CUDA_VISIBLE_DEVICES"] == "1,0"
    env = worker_env((), outer)
    assert env["PATH"] == "/bin"
    assert env["OMP_NUM_THREADS"] == "1"
    assert outer["CUDA_VISIBLE_DEVICES"] == "2,3"  # the caller's mapping is left alone


def test_jobs_carry_their_spec_name_timeout_and_visibility(tmp_path: Path) -> None:
    factory = JobFactory(workdir=tmp_path, timeout_s=7.0, python="/py")
    key = SaveKey(model="trap", layout=Layout.DP, variant=SaveVariant.WHOLE)
    save = factory.save_job(key)
    assert save.argv[:3] == ("/py", "-m", "harness.worker")
    assert save.timeout_s == 7.0
    spec = json.loads(Path(save.argv[3]).read_text())
    assert spec["role"] == "save"
    assert spec["variant"] == "whole"
    assert spec["layout"] == "dp"
    cell = Cell(
        model="trap",
        save_layout=Layout.DP,
        load_layout=Layout.SINGLE,
        format=Format.WHOLE,
        recipe="whole_module",
    )
    load = factory.load_job(cell, artifact_path="/a.pt", sha256="f00")
    spec = json.loads(Path(load.argv[3]).read_text())
    assert load.name == cell.id
    assert spec["artifact_sha256"] == "f00"
    assert spec["recipe"] == "whole_module"
    assert load.env["CUDA_VISIBLE_DEVICES"] == ""
    assert load.report_path.parent.name == cell.id


def test_a_distributed_job_has_its_ranks_and_a_checkpoint_directory(tmp_path: Path) -> None:
    cell = Cell(
        model="trap",
        save_layout=Layout.FSDP2,
        load_layout=Layout.FSDP2,
        format=Format.DCP,
        recipe="dcp_reshard",
        save_world=3,
        load_world=2,
    )
    factory = JobFactory(workdir=tmp_path)
    save = factory.save_job(cell.save_key)
    assert save.ranks == 3
    spec = json.loads(Path(save.argv[-1]).read_text())
    assert spec["artifact_path"].endswith("/checkpoint.dcp")
    load = factory.load_job(cell, artifact_path="x", sha256="y")
    assert load.ranks == 2
    assert load.rank_log(1).name == "load.rank1.log"
    plain = factory.load_job(
        replace(cell, load_layout=Layout.SINGLE), artifact_path="x", sha256="y"
    )
    assert plain.ranks == 0  # one plain process, not a distributed job of one rank
