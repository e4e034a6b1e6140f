"""Reports from a results file: Markdown content, and an HTML page that is self-contained."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.certify.report import grids, report_html, report_markdown
from harness.cli import main
from harness.core.outcomes import Outcome
from harness.core.results import read_results

from .test_diff import BASE, result, write


def test_markdown_has_environment_grid_and_failures(tmp_path: Path) -> None:
    results = read_results(write(tmp_path / "r.jsonl", [*BASE, result("as_saved", Outcome.FAIL)]))
    text = report_markdown(results)
    assert text.startswith("# ckpt-matrix results: 4 cells")
    assert "| torch | 2.14.1 |" in text
    assert "## trap, weights" in text
    assert "| save \\ load | single[cpu] |" in text
    assert "| dp[cpu] | 2 PASS, 1 XFAIL, 1 FAIL |" in text
    assert "## Failing cells (1)" in text


def test_html_is_self_contained_and_escapes(tmp_path: Path) -> None:
    hostile = result("strip_prefix", message="</script><img src=x onerror=alert(1)>")
    page = report_html(read_results(write(tmp_path / "r.jsonl", [hostile, *BASE[1:]])))
    assert "<script src" not in page
    assert "<link" not in page
    assert "http" not in page
    assert "</script><img" not in page  # the data block cannot be closed from inside
    data = re.search(r'<script type="application/json" id="cell-data">(.*?)</script>', page, re.S)
    assert data is not None
    cells = json.loads(data.group(1))
    assert set(cells) == {r.id for r in BASE}
    assert page.count('class="chip ') == 3 + 2  # three cells, two outcome filters


def test_grids_group_by_model_and_format(tmp_path: Path) -> None:
    (grid,) = grids(read_results(write(tmp_path / "r.jsonl", BASE)).results)
    assert (grid.model, grid.format, grid.rows, grid.columns) == (
        "trap",
        "weights",
        ["dp[cpu]"],
        ["single[cpu]"],
    )


def test_report_command_writes_both(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", BASE)
    assert main(["report", str(path)]) == 0
    assert (tmp_path / "r.md").exists()
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
