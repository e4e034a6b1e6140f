"""Reports from a results file: the verdict first, then the figures, the environment and a grid of
one chip per recipe; the HTML page is self-contained."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.certify.report import grid, report_html, report_markdown
from harness.cli import main
from harness.core.axes import Format, Layout, Wrapper
from harness.core.outcomes import Outcome
from harness.core.results import CellResult, read_results

from .test_diff import BASE, ENV, result, write


def cell(recipe: str, outcome: Outcome = Outcome.PASS, reason: str = "", **axes: Any) -> CellResult:
    """A result of ``recipe`` with the cell's axes replaced (layouts, world sizes, model...)."""
    made = result(recipe, outcome)
    return replace(made, cell=replace(made.cell, **axes), reason=reason or made.reason)


def reshard(save: int, load: int, outcome: Outcome = Outcome.PASS) -> CellResult:
    return cell(
        "dcp_reshard",
        outcome,
        save_layout=Layout.FSDP2,
        load_layout=Layout.FSDP2,
        format=Format.DCP,
        save_world=save,
        load_world=load,
    )


def ddp(save: int, outcome: Outcome = Outcome.PASS, model: str = "trap") -> CellResult:
    return cell(
        "ddp_module_state_dict", outcome, save_layout=Layout.DDP, save_world=save, model=model
    )


def first_element(page: str) -> str:
    match = re.search(r"<body>\s*(<h1 [^>]*>.*?</h1>)", page, re.S)
    assert match is not None, "the page's body does not open with a heading"
    return match.group(1)


def test_the_verdict_of_a_run_without_surprises(tmp_path: Path) -> None:
    results = read_results(write(tmp_path / "r.jsonl", BASE))
    text, page = report_markdown(results), report_html(results)
    assert text.split("\n")[0] == "# ckpt-matrix: every cell as predicted"
    assert (
        first_element(page)
        == '<h1 id="verdict" class="ok">ckpt-matrix: every cell as predicted</h1>'
    )
    assert "unexpected-1" not in text + page


def test_the_verdict_counts_unexpected_cells_and_links_the_first(tmp_path: Path) -> None:
    failed = cell("as_saved", Outcome.FAIL, reason="weights_differ: 2 tensors")
    crashed = cell("module_state_dict", Outcome.ERROR, reason="worker crashed")
    results = read_results(write(tmp_path / "r.jsonl", [*BASE, failed, crashed]))
    text, page = report_markdown(results), report_html(results)
    assert text.split("\n")[0] == (
        f"# ckpt-matrix: 2 unexpected (1 FAIL, 1 ERROR), first [`{failed.id}`](#unexpected-1)"
    )
    # the link's target: the first entry of the list of unexpected cells, naming that cell
    assert f'- <a id="unexpected-1"></a>**FAIL** `{failed.id}`: weights_differ: 2 tensors' in text
    assert f'- <a id="unexpected-2"></a>**ERROR** `{crashed.id}`: worker crashed' in text
    assert first_element(page) == (
        '<h1 id="verdict" class="bad">ckpt-matrix: 2 unexpected (1 FAIL, 1 ERROR), first '
        f'<a href="#unexpected-1"><code>{failed.id}</code></a></h1>'
    )
    target = re.search(r'<li id="unexpected-1">(.*?)</li>', page, re.S)
    assert target is not None
    assert f"<code>{failed.id}</code>" in target.group(1)
    assert page.count('id="unexpected-1"') == 1


def test_the_figures_follow_the_verdict_before_the_environment(tmp_path: Path) -> None:
    skipped = cell("as_saved", Outcome.SKIP)
    text = report_markdown(read_results(write(tmp_path / "r.jsonl", [*BASE, skipped])))
    lines = text.split("\n")
    # slice_prefix is a known-bad recipe: its PASS is fragile; no start and finish recorded
    assert lines[2] == (
        "**4** cells · **2** PASS · **1** XFAIL · **1** fragile · **1** skipped · "
        "**4.0 s** summed over cells (no start and finish recorded)"
    )
    assert lines[4] == "## Environment"
    timed = {**ENV, "started_at": "2026-12-05T14:08:48+00:00"}
    path = write(tmp_path / "t.jsonl", BASE, timed)
    with path.open("a") as handle:
        handle.write(json.dumps({"kind": "end", "finished_at": "2026-12-05T14:10:05+00:00"}) + "\n")
    timed_text = report_markdown(read_results(path))
    assert timed_text.split("\n")[2].endswith(" · **1 min 17 s** wall time")
    assert "| finished_at | 2026-12-05T14:10:05+00:00 |" in timed_text


def test_absent_and_null_environment_values_read_none(tmp_path: Path) -> None:
    environment = {**ENV, "driver_version": None, "cuda_driver_version": None}
    results = read_results(write(tmp_path / "r.jsonl", BASE, environment))
    text, page = report_markdown(results), report_html(results)
    assert "| driver_version | none |" in text
    assert "| torchvision | none |" in text  # not in the environment line at all
    assert "<tr><th>driver_version</th><td>none</td></tr>" in page
    assert "None" not in text
    assert ">None<" not in page


def test_one_chip_per_recipe_and_position_with_what_tells_its_cells_apart(tmp_path: Path) -> None:
    cells = [ddp(1), ddp(2), ddp(2, Outcome.ERROR, model="trap_module"), *BASE]
    results = read_results(write(tmp_path / "r.jsonl", cells))
    matrix = grid(results.results)
    assert (matrix.rows, matrix.columns) == (["dp[cpu]", "ddp[cpu]"], ["single[cpu]"])
    (chip,) = matrix.at("ddp[cpu]", "single[cpu]")
    assert (chip.recipe, len(chip.results), chip.outcome, chip.mixed) == (
        "ddp_module_state_dict",
        3,
        Outcome.ERROR,
        True,
    )
    assert chip.axes == ["model", "world"]
    assert [chip.describe(r) for r in chip.results] == [
        [("model", "trap"), ("world", "1→1")],
        [("model", "trap"), ("world", "2→1")],
        [("model", "trap_module"), ("world", "2→1")],
    ]
    text = report_markdown(results)
    assert "| ddp[cpu] | 🟪 ddp_module_state_dict 3: 2 PASS, 1 ERROR |" in text
    assert (
        "| dp[cpu] | 🟩 strip_prefix 1 PASS<br>🟦 unfixed_prefix 1 XFAIL<br>"
        "🟩 slice_prefix 1 PASS (1 fragile) |" in text
    )
    assert (
        "- ddp[cpu] → single[cpu]: 🟪 ddp_module_state_dict 3: 2 PASS, 1 ERROR — "
        "model trap, world 1→1: PASS · model trap, world 2→1: PASS · "
        "model trap_module, world 2→1: ERROR" in text
    )
    page = report_html(results)
    assert page.count("<details ") == 4
    chip_html = re.search(r'<details [^>]*class="chip ERROR mixed".*?</details>', page, re.S)
    assert chip_html is not None
    assert "<th>model</th><th>world</th><th>outcome</th>" in chip_html.group(0)
    assert chip_html.group(0).count('<tr class="cell"') == 3


def test_a_reshard_is_a_square_of_world_sizes(tmp_path: Path) -> None:
    cells = [reshard(2, 2), reshard(2, 3, Outcome.FAIL), reshard(3, 2), reshard(3, 3)]
    cells.append(replace(reshard(3, 3), cell=replace(cells[-1].cell, save_wrapper=Wrapper.COMPILE)))
    results = read_results(write(tmp_path / "r.jsonl", cells))
    (chip,) = grid(results.results).at("fsdp2[cpu]", "fsdp2[cpu]")
    square = chip.square
    assert square is not None
    assert (square.saves, square.loads) == ([2, 3], [2, 3])
    assert [r.outcome for r in square.cells[(2, 3)]] == [Outcome.FAIL]
    assert len(square.cells[(3, 3)]) == 2
    text = report_markdown(results)
    assert (
        "### fsdp2[cpu] → fsdp2[cpu]\n\n"
        "| recipe | saved by \\ loaded by | 2 | 3 |\n"
        "| --- | --- | --- | --- |\n"
        "| `dcp_reshard` | 2 | 🟩 | 🟥 |\n"
        "|  | 3 | 🟩 | 🟩 |\n" in text
    )
    page = report_html(results)
    assert '<td class="sq FAIL" title="saved by 2, loaded by 3: FAIL"></td>' in page
    assert '<td class="sq PASS" title="saved by 3, loaded by 3: PASS, PASS">2</td>' in page
    assert grid(BASE).at("dp[cpu]", "single[cpu]")[0].square is None


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
    assert page.count('<details id="chip-') == 3
    assert page.count('<input type="checkbox"') == 2  # two outcomes to filter by


def test_report_command_writes_both(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", BASE)
    assert main(["report", str(path)]) == 0
    assert (tmp_path / "r.md").read_text().startswith("# ckpt-matrix: every cell as predicted\n")
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
