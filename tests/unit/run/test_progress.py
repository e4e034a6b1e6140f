from __future__ import annotations

import io

import pytest
from rich.console import Console

from harness.core.outcomes import Outcome
from harness.run.progress import PlainProgress, RichProgress, reporter_for
from tests.unit.certify.test_diff import result


def test_plain_lines_for_logs() -> None:
    stream = io.StringIO()
    reporter = PlainProgress(stream)
    reporter.start(2)
    reporter.update(result("strip_prefix"), 1, 2)
    reporter.update(result("as_saved", Outcome.FAIL), 2, 2)
    reporter.stop()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] PASS")
    assert lines[1].startswith("[2/2] FAIL")


def test_rich_bar_counts_failures() -> None:
    stream = io.StringIO()
    reporter = RichProgress(Console(file=stream, force_terminal=True, width=120))
    reporter.start(3)
    reporter.update(result("strip_prefix"), 1, 3)
    reporter.update(result("as_saved", Outcome.ERROR), 2, 3)
    reporter.update(result("slice_prefix"), 3, 3)
    reporter.stop()
    text = stream.getvalue()
    assert "3/3" in text
    assert "1 failing" in text
    assert "[2/3] ERROR" in text  # the failing cell is printed as it happens
    assert reporter.failures == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_or_ci_gets_plain_lines_and_a_terminal_the_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert isinstance(reporter_for(io.StringIO()), PlainProgress)
    assert isinstance(reporter_for(_Terminal()), RichProgress)
    monkeypatch.setenv("CI", "true")
    assert isinstance(reporter_for(_Terminal()), PlainProgress)
