"""The pytest plugin end to end, in a separate pytest process."""

from __future__ import annotations

import pytest

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
from harness.outcomes import Outcome

def test_cell(ckpt_cell, ckpt_result):
    assert ckpt_result.id == ckpt_cell.id
    if ckpt_result.outcome is Outcome.XFAIL:
        pytest.xfail(ckpt_result.reason)
    assert ckpt_result.outcome is Outcome.PASS, ckpt_result.describe()

def test_untouched():
    pass
"""


@pytest.mark.slow
def test_cells_become_parametrized_tests_with_readable_ids(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", tiny=SCENARIO)
    pytester.makepyfile(test_cells=TEST_FILE)
    result = pytester.runpytest_subprocess(
        "--ckpt-scenarios", "tiny.toml", "-v", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_cell?model=trap-save=dp?cpu?-load=single?cpu?-fmt=weights-recipe=strip_prefix?"
            " PASSED*",
            "*recipe=unfixed_prefix? XFAIL*",
        ]
    )


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
