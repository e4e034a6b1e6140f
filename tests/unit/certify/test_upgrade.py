"""An upgrade's certification from results files written by the harness's own writer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.certify.upgrade import certify_upgrade, crossing, to_html, to_markdown
from harness.cli import main
from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.oracle import Expectation
from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsWriter, read_results

OLD, NEW = "2.14.1+cu130", "2.15.0+cu132"


def result(
    model: str, outcome: Outcome = Outcome.PASS, saved: str = OLD, loaded: str = NEW, **more: Any
) -> CellResult:
    cell = Cell(
        model=model,
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe="as_saved",
    )
    observed = None
    if outcome is not Outcome.SKIP:
        observed = {"saved_with_torch": saved, "loaded_with_torch": loaded, **more}
    return CellResult(
        cell=cell,
        outcome=outcome,
        expected=Expectation(error=None, reason="r", tensor_device="cpu"),
        reason=more.get("reason", f"{outcome} because"),
        observed=observed,
        error=None,
        duration_s=1.0,
    )


def write(path: Path, torch: str, results: list[CellResult]) -> Path:
    with ResultsWriter(path, {"torch": torch}, resume=False) as writer:
        for r in results:
            writer.append(r)
    return path


NO_VISION = (
    "resnet18 needs torchvision, which the workers' interpreter lacks (pip install torchvision "
    "beside torch, or leave the model out)"
)


def runs(tmp_path: Path, forward: list[CellResult]) -> list[Path]:
    before = [result("trap", saved=OLD, loaded=OLD), result("resnet18", saved=OLD, loaded=OLD)]
    after = [
        result("trap", saved=NEW, loaded=NEW),
        replace(result("resnet18", Outcome.SKIP), reason=NO_VISION),
    ]
    return [
        write(tmp_path / "old.jsonl", OLD, before),
        write(tmp_path / "new.jsonl", NEW, after),
        write(tmp_path / "forward.jsonl", NEW, forward),
    ]


def test_an_upgrade_whose_files_cross_is_certified_naming_what_did_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new, forward = runs(
        tmp_path, [result("trap"), replace(result("resnet18", Outcome.SKIP), reason=NO_VISION)]
    )
    markdown, page = tmp_path / "c.md", tmp_path / "c.html"
    args = [str(old), str(new), str(forward), "--markdown", str(markdown), "--html", str(page)]
    assert main(["upgrade-report", *args]) == 0
    first = markdown.read_text().splitlines()[0]
    assert first == (
        "# CERTIFIED: torch 2.14.1 -> 2.15.0: 2 cells compared, 1 loaded under 2.15.0 from files "
        "2.14.1 saved; not run under 2.15.0: 1 cell(s) need torchvision"
    )
    assert (
        page.read_text().split("<body>\n", 1)[1].startswith('<h1 style="color:#1a7f37">CERTIFIED')
    )
    assert capsys.readouterr().out == markdown.read_text()


def test_a_crossed_cell_that_fails_or_a_cell_saved_again_is_not_certified(tmp_path: Path) -> None:
    failed = result("trap", Outcome.FAIL)
    again = result("tied", saved=NEW, loaded=NEW)
    old, new, forward = runs(tmp_path, [failed, again])
    upgrade = certify_upgrade(read_results(old), read_results(new), read_results(forward))
    assert not upgrade.certified
    assert upgrade.verdict().startswith(
        "NOT CERTIFIED: torch 2.14.1 -> 2.15.0: 1 crossed cell(s) not as predicted (first "
        f"{failed.id}: FAIL), 1 cell(s) did not cross"
    )
    assert "Saved again by the loading torch (did not cross) (1)" in to_markdown(upgrade)
    assert to_html(upgrade).count("color:#cf222e") == 1


def test_a_downgrade_that_fails_is_told_and_does_not_gate(tmp_path: Path) -> None:
    old, new, forward = runs(tmp_path, [result("trap")])
    backward = write(
        tmp_path / "back.jsonl", OLD, [result("trap", Outcome.ERROR, saved=NEW, loaded=OLD)]
    )
    upgrade = certify_upgrade(
        read_results(old),
        read_results(new),
        read_results(forward),
        backward=read_results(backward),
    )
    assert upgrade.certified
    assert upgrade.backward is not None
    assert len(upgrade.backward.unexpected) == 1
    assert "(told, not gating: a downgrade may fail)" in to_markdown(upgrade)


def test_lost_coverage_without_a_missing_package_is_not_certified(tmp_path: Path) -> None:
    old = write(tmp_path / "old.jsonl", OLD, [result("trap", saved=OLD, loaded=OLD)])
    new = write(tmp_path / "new.jsonl", NEW, [replace(result("trap", Outcome.SKIP), reason="no")])
    forward = write(tmp_path / "forward.jsonl", NEW, [result("trap")])
    upgrade = certify_upgrade(read_results(old), read_results(new), read_results(forward))
    assert upgrade.lost() == [result("trap").id]
    assert not upgrade.certified


def test_crossing_sorts_each_cell_by_the_torches_it_names(tmp_path: Path) -> None:
    results = read_results(
        write(
            tmp_path / "f.jsonl",
            NEW,
            [
                result("trap"),
                result("tied", saved=NEW, loaded=NEW),
                result("block", Outcome.SKIP),
                result("dropout", Outcome.XPASS),
                replace(result("mixed_dtypes", Outcome.ERROR), observed=None),  # a job crashed
            ],
        )
    )
    found = crossing(results, "2.14.1", "2.15.0")
    assert [r.cell.model for r in found.crossed] == ["dropout", "trap"]  # in id order
    assert [r.cell.model for r in found.unexpected] == ["dropout"]
    assert [r.cell.model for r in found.saved_again] == ["tied"]
    assert [r.cell.model for r in found.broken] == ["mixed_dtypes"]
    assert [r.cell.model for r in found.not_run] == ["block"]


def test_several_golden_recordings_are_verified_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a ladder's corpus has one recording per release; each is verified under the newer torch
    old, new, forward = runs(tmp_path, [result("trap")])
    first = write(tmp_path / "g1.jsonl", NEW, [result("trap", saved=NEW, loaded=NEW)])
    second = write(tmp_path / "g2.jsonl", NEW, [result("tied", Outcome.FAIL)])
    args = [str(old), str(new), str(forward), "--golden", str(first), "--golden", str(second)]
    assert main(["upgrade-report", *args]) == 1
    out = capsys.readouterr().out
    assert "1 golden file(s) failed" in out.splitlines()[0]
    assert "2 file(s), 1 failed." in out


def test_a_crossing_reads_alike_whatever_order_the_cells_finished_in(tmp_path: Path) -> None:
    # two jobs finish cells in any order; the certification lists them by id, as diff does
    cells = [result(model, Outcome.FAIL) for model in ("trap", "block", "tied", "dropout")]
    orders = [cells, cells[::-1], cells[1:] + cells[:1]]
    tables = []
    for number, order in enumerate(orders):
        folder = tmp_path / str(number)
        folder.mkdir()
        old, new, forward = runs(folder, order)
        golden = write(folder / "golden.jsonl", NEW, order)  # verified several at a time too
        upgrade = certify_upgrade(
            read_results(old), read_results(new), read_results(forward), golden=read_results(golden)
        )
        assert [r.cell.model for r in upgrade.golden_failures] == [
            "block",
            "dropout",
            "tied",
            "trap",
        ]
        assert [r.cell.model for r in upgrade.forward.unexpected] == [
            "block",
            "dropout",
            "tied",
            "trap",
        ]
        assert f"(first {cells[1].id}: FAIL)" in upgrade.verdict()
        tables.append(to_markdown(upgrade).split("### The ", 1)[0])
    assert tables[0] == tables[1] == tables[2]
