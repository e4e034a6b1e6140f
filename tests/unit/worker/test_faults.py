"""Faults injected into real runs: every one ends as an ERROR naming the cell, the cause and the
tail of the log, and the run goes on (``harness.worker.faults``, switched on by the tests'
environment only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.results import CellResult, read_results
from harness.worker.faults import VARIABLE, Fault, planned

PLAIN = """
[[scenario]]
name = "faults"
models = ["trap"]
save_layouts = ["single", "dp"]
load_layouts = ["single", "dp"]
formats = ["weights"]
recipes = ["as_saved", "strip_prefix", "slice_prefix", "wrap_loader", "unfixed_prefix",
           "module_state_dict"]
"""

DISTRIBUTED = """
[[scenario]]
name = "rank-faults"
models = ["trap"]
save_layouts = ["ddp"]
load_layouts = ["ddp"]
formats = ["weights"]
recipes = ["ddp_module_state_dict"]
save_world_sizes = [2, 3]
load_world_sizes = [2]
visibility = "cpu"
"""


def cell(save: str, load: str, recipe: str) -> str:
    return f"save={save}[cpu]-load={load}[cpu]-fmt=weights-recipe={recipe}"


# (fault kind, the cell it strikes, what the cell's reason must say)
LOAD_FAULTS = [
    ("segv", cell("single", "single", "as_saved"), "killed by SIGSEGV"),
    ("abort", cell("single", "single", "slice_prefix"), "killed by SIGABRT"),
    ("exit", cell("single", "dp", "slice_prefix"), "exited with code 3"),
    ("hang", cell("single", "dp", "unfixed_prefix"), "timed out after 6.0 s and was stopped"),
    ("oom", cell("dp", "single", "strip_prefix"), "can't allocate memory"),
    ("no_report", cell("dp", "single", "slice_prefix"), "exited 0 but wrote no report"),
    ("torn_report", cell("dp", "single", "wrap_loader"), "is not valid JSON"),
    ("bad_json", cell("dp", "single", "unfixed_prefix"), "is not valid JSON"),
    ("missing_field", cell("dp", "dp", "as_saved"), "the loaded report lacks the field 'tensors'"),
    ("zygote_dies", cell("dp", "dp", "slice_prefix"), "the launcher lost the job: the zygote"),
]


def run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: str,
    faults: list[dict[str, object]],
    *extra: str,
) -> dict[str, CellResult]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "scenario.toml"
    path.write_text(scenario)
    monkeypatch.setenv(VARIABLE, json.dumps(faults))
    out = tmp_path / "results.jsonl"
    code = main(
        [
            "run",
            "--scenarios",
            str(path),
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "w"),
            *extra,
        ]
    )
    assert code == 1  # the faults fail the run; they do not stop it
    return {r.id.split("-", 1)[1]: r for r in read_results(out).results}


def test_planned_reads_only_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    assert planned() == []
    monkeypatch.setenv(VARIABLE, json.dumps([{"kind": "segv", "match": "x", "role": "load"}]))
    assert planned() == [Fault(kind="segv", match="x", role="load")]
    monkeypatch.setenv(VARIABLE, json.dumps([{"kind": "meteor", "match": "x"}]))
    with pytest.raises(ValueError, match="unknown fault kind"):
        planned()


@pytest.mark.slow
def test_worker_faults_each_end_as_an_error_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults: list[dict[str, object]] = [
        {"kind": kind, "match": target, "role": "load"} for kind, target, _ in LOAD_FAULTS
    ]
    faults += [
        {"kind": "stdout_garbage", "match": cell("dp", "dp", "strip_prefix"), "role": "load"},
        {"kind": "disk_full", "match": "dp[cpu]-module_state_dict", "role": "save"},
    ]
    # every other job is forked from the zygote and ends within a second or two: the hanging
    # one alone reaches the timeout, which the run waits out
    results = run(tmp_path, monkeypatch, PLAIN, faults, "--jobs", "1", "--timeout", "6")
    assert len(results) == 13  # every cell recorded
    for kind, target, said in LOAD_FAULTS:
        result = results[f"model=trap-{target}".split("-", 1)[1]]
        assert result.outcome.value == "ERROR", kind
        assert target in result.reason, kind  # the cell is named
        assert said in result.reason, (kind, result.reason)
        assert result.error is not None, kind
    # the log's tail travels with the error (a signal's, a traceback's)
    oom = results[cell("dp", "single", "strip_prefix")]
    assert oom.error is not None
    assert "allocate" in str(oom.error.get("stderr_tail"))
    # garbage on a worker's stdout is only log: the cell is judged as ever
    assert results[cell("dp", "dp", "strip_prefix")].outcome.value == "PASS"
    # a save on a full disk: both cells that need it ERROR, and no partial file is left to use
    for load in ("single", "dp"):
        full = results[cell("dp", load, "module_state_dict")]
        assert full.outcome.value == "ERROR"
        assert "the disk is full or the file too large" in full.reason
    artifact = tmp_path / "w" / "artifacts" / "trap-dp[cpu]-module_state_dict"
    assert not any(p.suffix in (".pt", ".tmp") for p in artifact.iterdir())


@pytest.mark.slow
def test_rank_faults_and_a_zygote_that_answers_garbage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dies = "save=ddpx2[cpu]-load=ddpx2[cpu]-fmt=weights-recipe=ddp_module_state_dict"
    aborts = "save=ddpx3[cpu]-load=ddpx2[cpu]-fmt=weights-recipe=ddp_module_state_dict"
    faults: list[dict[str, object]] = [
        # a rank that dies in the middle of its load
        {"kind": "exit", "match": dies, "role": "load", "rank": 1},
        # the saver aborts at teardown, after the checkpoint and its report were written
        {"kind": "teardown_abort", "match": "trap-ddpx3", "role": "save", "rank": 0},
    ]
    results = run(tmp_path, monkeypatch, DISTRIBUTED, faults, "--jobs", "1")
    assert results[dies].outcome.value == "ERROR"
    assert "rank 1 of 2 exited with code 3" in results[dies].reason
    assert results[aborts].outcome.value == "ERROR"
    assert "SIGABRT" in results[aborts].reason
    garbage: list[dict[str, object]] = [
        {"kind": "zygote_garbage", "match": cell("single", "single", "as_saved"), "role": "load"}
    ]
    plain = run(tmp_path / "g", monkeypatch, PLAIN, garbage, "--jobs", "1")
    hit = plain[cell("single", "single", "as_saved")]
    assert hit.outcome.value == "ERROR"
    assert "the launcher lost the job" in hit.reason
    assert plain[cell("single", "single", "slice_prefix")].outcome.value == "XFAIL"


@pytest.mark.slow
def test_rerun_errors_tells_flaky_from_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky = cell("single", "single", "as_saved")
    consistent = cell("dp", "dp", "as_saved")
    faults: list[dict[str, object]] = [
        {"kind": "segv", "match": flaky, "role": "load", "attempt": 0},  # the first run only
        {"kind": "abort", "match": consistent, "role": "load"},  # every run
        # a save that fails the first time: the rerun saves afresh
        {"kind": "exit", "match": "trap-single[cpu]-state_dict", "role": "save", "attempt": 0},
    ]
    results = run(tmp_path, monkeypatch, PLAIN, faults, "--jobs", "2", "--rerun-errors", "2")
    once = results[flaky]
    assert once.outcome.value == "PASS"
    assert once.flaky
    (first,) = once.attempts
    assert first["outcome"] == "ERROR"
    assert "SIGSEGV" in first["reason"] or "exited with code 3" in first["reason"]
    always = results[consistent]
    assert always.outcome.value == "ERROR"
    assert not always.flaky
    assert len(always.attempts) == 2  # three runs in all, each recorded
    assert all("SIGABRT" in attempt["reason"] for attempt in always.attempts)
    # every cell that shared the failed first save passed on a fresh one
    saved_single = [r for name, r in results.items() if name.startswith("save=single[cpu]")]
    assert {r.outcome.value for r in saved_single} <= {"PASS", "XFAIL"}
    assert all(r.flaky for r in saved_single)
    out = capsys.readouterr().out
    assert "Flaky: ERROR at first, then otherwise on a rerun" in out
    assert "Consistent errors: ERROR on every attempt" in out
    # diff shows them apart, and can be told to fail on them
    candidate = tmp_path / "results.jsonl"
    assert main(["diff", str(candidate), str(candidate)]) == 0
    assert "Flaky in the candidate" in capsys.readouterr().out
    assert main(["diff", str(candidate), str(candidate), "--fail-on-flaky"]) == 1
