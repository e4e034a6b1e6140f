from __future__ import annotations

import json
from pathlib import Path

from harness.axes import Format, Layout, SaveVariant
from harness.cell import Cell, SaveKey
from harness.plan import JobFactory, worker_env


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
