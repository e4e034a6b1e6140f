"""The pytest plugin end to end, in a separate pytest process."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from harness.launchers import LAUNCHERS

SCENARIO = """
[[scenario]]
name = "tiny"
models = ["trap"]
save_layouts = ["dp"]
load_layouts = ["single"]
formats = ["weights"]
recipes = ["strip_prefix", "unfixed_prefix"]
"""

TEST_FILE = """
import pytest

from harness.launchers import LAUNCHERS
from harness.core.outcomes import Outcome

def test_cell(ckpt_cell, ckpt_result):
    assert ckpt_result.id == ckpt_cell.id
    if ckpt_result.outcome is Outcome.XFAIL:
        pytest.xfail(ckpt_result.reason)
    assert ckpt_result.outcome is Outcome.PASS, ckpt_result.describe()

def test_untouched():
    pass

@pytest.mark.parametrize("recipe", ["unfixed_prefix"])
def test_strict(ckpt_cell, ckpt_result, recipe):
    if ckpt_cell.recipe == recipe:
        assert ckpt_result.outcome is Outcome.PASS, ckpt_result.describe()
"""


@pytest.mark.slow
def test_cells_become_parametrized_tests_with_readable_ids(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", tiny=SCENARIO)
    pytester.makepyfile(test_cells=TEST_FILE)
    result = pytester.runpytest_subprocess(
        "--ckpt-scenarios", "tiny.toml", "-v", "-p", "no:cacheprovider", "--junitxml=junit.xml"
    )
    # test_strict demands PASS of every cell: the known-bad one fails, with its expectation
    result.assert_outcomes(passed=3, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_cell?model=trap-save=dp?cpu?-load=single?cpu?-fmt=weights-recipe=strip_prefix?"
            " PASSED*",
            "*recipe=unfixed_prefix? XFAIL*",
        ]
    )
    cases = {
        case.get("name"): case
        for case in ElementTree.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    }
    xfailed = cases[
        "test_cell[model=trap-save=dp[cpu]-load=single[cpu]-fmt=weights-recipe=unfixed_prefix]"
    ]
    properties = {p.get("name"): p.get("value", "") for p in xfailed.iter("property")}
    assert properties["ckpt_outcome"] == "XFAIL"
    assert json.loads(properties["ckpt_expected"])["error_class"] == "key_mismatch"
    assert properties["ckpt_observed_error_class"] == "key_mismatch"
    strict = cases[
        "test_strict[model=trap-save=dp[cpu]-load=single[cpu]-fmt=weights"
        "-recipe=unfixed_prefix-unfixed_prefix]"
    ]
    failure = strict.find("failure")
    assert failure is not None
    # the failure's text holds the cell's outcome, its expectation and what was observed
    assert "recipe=unfixed_prefix: XFAIL" in (failure.get("message") or "")
    assert "'error_class': 'key_mismatch'" in (failure.text or "")
    assert '"status": "raised"' in (failure.text or "")


def test_bad_scenarios_are_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", bad=SCENARIO.replace('"trap"', '"vgg"'))
    pytester.makepyfile(test_cells=TEST_FILE)
    result = pytester.runpytest_subprocess("--ckpt-scenarios", "bad.toml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ckpt-scenarios: *unknown model 'vgg'*"])


def test_plugin_is_inert_without_ckpt_cell(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_session_launcher_is_a_plugin_choice(
    pytester: pytest.Pytester, launcher: str
) -> None:
    # The plugin spells its choices out so that loading it imports nothing from the harness;
    # this keeps the two lists from drifting apart.
    config = pytester.parseconfig("--ckpt-launcher", launcher)
    assert config.getoption("ckpt_launcher") == launcher


def test_an_unknown_launcher_is_a_usage_error(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError, match="fork"):
        pytester.parseconfig("--ckpt-launcher", "fork")


def test_ckpt_shard_keeps_one_part_and_a_bad_one_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".toml", tiny=SCENARIO.replace('"dp"', '"dp", "single"'))
    pytester.makepyfile(test_cells="def test_cell(ckpt_cell):\n    pass\n")
    ids = []
    for k in (1, 2):
        result = pytester.runpytest_subprocess(
            "--ckpt-scenarios", "tiny.toml", f"--ckpt-shard={k}/2", "--collect-only", "-q"
        )
        assert result.ret == pytest.ExitCode.OK
        ids.append({line for line in result.stdout.lines if line.startswith("test_cells.py::")})
    assert all(ids)
    assert ids[0].isdisjoint(ids[1])
    bad = pytester.runpytest_subprocess("--ckpt-scenarios", "tiny.toml", "--ckpt-shard=5/4")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--ckpt-shard '5/4'*"])


def test_ckpt_model_runs_the_scenarios_with_that_model(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", tiny=SCENARIO)
    pytester.makepyfile(test_cells="def test_cell(ckpt_cell):\n    pass\n")
    mine = pytester.runpytest_subprocess(
        "--ckpt-scenarios", "tiny.toml", "--ckpt-model=my_pkg.models:build", "--collect-only", "-q"
    )
    assert mine.ret == pytest.ExitCode.OK
    cells = [line for line in mine.stdout.lines if line.startswith("test_cells.py::")]
    assert cells
    assert all("model=my_pkg.models:build-" in line for line in cells)
    bad = pytester.runpytest_subprocess("--ckpt-scenarios", "tiny.toml", "--ckpt-model=vgg")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--ckpt-model vgg: unknown model 'vgg'*"])
