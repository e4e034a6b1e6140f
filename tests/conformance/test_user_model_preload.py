"""The zygote imports a user's model module once, before it forks, so that no worker imports it
(transformers, say) again; a module whose import makes forking unsafe is left to each worker,
said once, and its cells run as they would. Whole runs from the command line, with the modules
in the current directory (found there first, as ``python -m`` finds them) and each import
recorded by the importing process's pid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.core.results import read_results

SCENARIO = """
[[scenario]]
name = "preload"
models = [{models}]
save_layouts = ["single", "dp"]
load_layouts = ["single"]
formats = ["weights"]
recipes = ["as_saved", "strip_prefix"]
"""

MODULE = """
import os
from pathlib import Path

import torch
from torch import nn

with open(Path(__file__).with_suffix(".imports"), "a") as record:
    record.write(f"{{os.getpid()}}\\n")
{extra}

def build():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def example_input(device):
    return torch.randn(4, 8, device=device)
"""

UNSAFE = {
    "thread": (
        "import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()",
        "threads, ",
    ),
    "computes": ("SCALE = torch.ones(2).sum()", "ran a tensor computation (torch.ones at "),
}


def run(
    folder: Path, modules: dict[str, str], **env: str
) -> tuple[subprocess.CompletedProcess[str], int, dict[str, set[int]]]:
    """Run the scenario with one model per module (name -> extra code at import), in
    ``folder``; the command, its pid, and the pids of each module's load workers."""
    for name, extra in modules.items():
        (folder / f"{name}.py").write_text(MODULE.format(extra=extra))
    models = ", ".join(f'"{name}:build"' for name in modules)
    (folder / "preload.toml").write_text(SCENARIO.format(models=models))
    out = folder / "results.jsonl"
    command = [sys.executable, "-m", "harness.cli", "run", "--scenarios", "preload.toml"]
    command += ["--out", str(out), "--jobs", "2", "--workdir", "work"]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=600)
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert done.returncode == 0, stdout[-3000:] + stderr[-3000:]
    results = read_results(out).results
    assert len(results) == 2 * len(modules)
    assert {str(r.outcome) for r in results} == {"PASS"}, [r.describe() for r in results]
    loaders: dict[str, set[int]] = {name: set() for name in modules}
    for result in results:
        loaders[result.cell.model.partition(":")[0]].add((result.observed or {})["probe"]["pid"])
    return done, process.pid, loaders


def imports(folder: Path, module: str) -> list[int]:
    return [int(line) for line in (folder / f"{module}.imports").read_text().split()]


@pytest.mark.slow
def test_the_zygote_imports_a_users_module_once_for_all_its_workers(tmp_path: Path) -> None:
    done, cli_pid, loaders = run(tmp_path, {"plain_model": ""})
    [zygote] = imports(tmp_path, "plain_model")  # once, by one process
    assert zygote != cli_pid
    assert len(loaders["plain_model"]) == 2
    assert zygote not in loaders["plain_model"]  # not a worker: the process they are forked from
    assert "note" not in done.stderr


@pytest.mark.slow
def test_with_the_preload_off_each_worker_imports_the_module(tmp_path: Path) -> None:
    _, _, loaders = run(tmp_path, {"plain_model": ""}, CKPT_MATRIX_PRELOAD_MODELS="0")
    pids = imports(tmp_path, "plain_model")
    assert loaders["plain_model"] <= set(pids)
    # the environment job, two saves and two loads: each its own process, each importing
    assert len(pids) == 5
    assert len(set(pids)) == 5


@pytest.mark.slow
@pytest.mark.parametrize("unsafe", sorted(UNSAFE))
def test_a_module_that_makes_forking_unsafe_is_imported_by_each_worker(
    tmp_path: Path, unsafe: str
) -> None:
    code, reason = UNSAFE[unsafe]
    done, _, loaders = run(tmp_path, {"plain_model": "", "unsafe_model": code})
    notes = [line for line in done.stderr.splitlines() if "note" in line]
    assert len(notes) == 1, done.stderr
    assert notes[0].startswith(
        "ckpt-matrix: note: unsafe_model is imported by each worker, not once by the zygote: "
        "importing it there made forking unsafe ("
    )
    assert reason in notes[0]
    # plain_model (first in order) is imported by the zygote, and again after the zygote
    # started afresh: the same process, executed again; no worker imports it
    zygote, again = imports(tmp_path, "plain_model")
    assert zygote == again
    unsafe_pids = Counter(imports(tmp_path, "unsafe_model"))
    # the zygote imported it once, before it started afresh without it; then the environment
    # job, two saves and two loads imported it each
    assert unsafe_pids[zygote] == 1
    assert sum(unsafe_pids.values()) == 6
    assert loaders["unsafe_model"] <= set(unsafe_pids)
    assert zygote not in loaders["plain_model"] | loaders["unsafe_model"]
    log = next((tmp_path / "work" / "zygotes").iterdir()).read_text()
    assert "zygote: importing unsafe_model made forking unsafe: " in log
    assert log.count("starting afresh without it") == 1
