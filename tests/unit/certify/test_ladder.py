"""The release ladder's table: each older release's files loaded under the newest, by format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.certify.ladder import climb, entry, to_markdown
from harness.cli import main
from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.oracle import Expectation
from harness.core.outcomes import Outcome
from harness.core.results import CellResult, ResultsWriter, read_results

NEWEST = "2.15.0+cu132"


def result(
    saved: str,
    loaded: str,
    outcome: Outcome = Outcome.PASS,
    *,
    fmt: Format = Format.WEIGHTS,
    recipe: str = "as_saved",
    serialization: str = "zip",
    model: str = "trap",
    **observed: Any,
) -> CellResult:
    distributed = fmt is Format.DCP
    cell = Cell(
        model=model,
        save_layout=Layout.FSDP2 if distributed else Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=fmt,
        recipe=recipe,
        serialization=serialization,
        save_world=2 if distributed else 1,
    )
    return CellResult(
        cell=cell,
        outcome=outcome,
        expected=Expectation(error=None, reason="r", tensor_device="cpu"),
        reason=f"{outcome} because",
        observed={"saved_with_torch": saved, "loaded_with_torch": loaded, **observed},
        error=None,
        duration_s=1.0,
    )


def write(path: Path, torch: str, results: list[CellResult]) -> Path:
    with ResultsWriter(path, {"torch": torch, "python": "3.11.7"}, resume=False) as writer:
        for r in results:
            writer.append(r)
    return path


def rung(tmp_path: Path, release: str, crossed: list[CellResult]) -> list[str]:
    """An older release's own run (its cells as crossed, saved and loaded under itself) and the
    newest's run loading its files."""
    own = [
        result(
            release,
            release,
            r.outcome,
            fmt=r.cell.format,
            recipe=r.cell.recipe,
            serialization=r.cell.serialization,
            model=r.cell.model,
        )
        for r in crossed
    ]
    return [
        str(write(tmp_path / f"own-{release}.jsonl", release, own)),
        str(write(tmp_path / f"cross-{release}.jsonl", NEWEST, crossed)),
    ]


def test_a_ladder_whose_files_load_as_predicted_holds_with_a_release_by_format_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = rung(
        tmp_path,
        "2.6.0+cu124",
        [
            result("2.6.0+cu124", NEWEST),
            result("2.6.0+cu124", NEWEST, serialization="legacy"),
            result("2.6.0+cu124", NEWEST, model="tied"),
            result(
                "2.6.0+cu124",
                NEWEST,
                Outcome.XFAIL,
                fmt=Format.WHOLE,
                recipe="as_saved_whole",
                error_class="not_picklable",
            ),
        ],
    )
    new = rung(
        tmp_path,
        "2.8.0+cu128",
        [
            result("2.8.0+cu128", NEWEST),
            result("2.8.0+cu128", NEWEST, fmt=Format.DCP, recipe="dcp_no_dist"),
        ],
    )
    markdown = tmp_path / "ladder.md"
    args = ["--rung", *old, "--rung", *new, "--markdown", str(markdown)]
    assert main(["ladder-report", *args]) == 0
    text = markdown.read_text()
    assert capsys.readouterr().out == text
    assert text.splitlines()[0] == (
        "# LADDER HOLDS: 6 cells of files saved by 2.6.0, 2.8.0, loaded under 2.15.0, each as "
        "predicted"
    )
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 2.")}
    # each row names the release's torch build, as its own run did
    header = next(line for line in text.splitlines() if line.startswith("| saved under"))
    assert header == (
        "| saved under | weights zip | weights legacy | whole zip | dcp fsdp2x1 | dcp fsdp2x2 |"
    )
    assert rows["| 2.6.0+cu124 (Python 3.11.7)"] == (
        "| 2.6.0+cu124 (Python 3.11.7) | PASS 2 | PASS 1 | XFAIL 1 (not_picklable 1) "
        "| not saved [1] | not saved [1] |"
    )
    assert rows["| 2.8.0+cu128 (Python 3.11.7)"] == (
        "| 2.8.0+cu128 (Python 3.11.7) | PASS 1 | - | - | - | PASS 1 |"
    )
    assert "[1] torch 2.6.0's FSDP2 does not run on the CPU" in text


def test_a_file_that_fails_under_the_newest_or_did_not_cross_breaks_the_ladder(
    tmp_path: Path,
) -> None:
    failed = result("2.8.0", NEWEST, Outcome.FAIL, error_class="missing_keys")
    again = result(NEWEST, NEWEST, model="tied")  # saved again by the loading torch
    bad = result("2.8.0", NEWEST, Outcome.XPASS, fmt=Format.WHOLE, recipe="as_saved_whole")
    own, crossing = rung(tmp_path, "2.8.0", [failed, again, bad])
    ladder = climb([(read_results(Path(own)), read_results(Path(crossing)))])
    assert not ladder.holds
    assert ladder.verdict() == (
        "LADDER BROKEN: 3 cells of files saved by 2.8.0, loaded under 2.15.0, 3 not as predicted"
    )
    assert entry(ladder.rungs[0], "weights zip") == "FAIL 2 (missing_keys 1, saved_again 1)"
    assert entry(ladder.rungs[0], "whole zip") == "FAIL 1 (xpass 1)"
    text = to_markdown(ladder)
    assert f"| `{failed.id}` | FAIL | missing_keys |" in text
    assert main(["ladder-report", "--rung", own, crossing]) == 1


def test_a_corpus_file_that_fails_verification_breaks_the_ladder(tmp_path: Path) -> None:
    own, crossing = rung(tmp_path, "2.8.0", [result("2.8.0", NEWEST)])
    verified = write(tmp_path / "golden.jsonl", NEWEST, [result("2.8.0", NEWEST, Outcome.FAIL)])
    ladder = climb(
        [(read_results(Path(own)), read_results(Path(crossing)))], [read_results(verified)]
    )
    assert ladder.verdict() == (
        "LADDER BROKEN: 1 cells of files saved by 2.8.0, loaded under 2.15.0, 0 not as "
        "predicted; the corpus: 1 file(s) verified, 1 failed"
    )


def test_releases_loaded_under_different_torches_are_not_one_ladder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = rung(tmp_path, "2.6.0", [result("2.6.0", NEWEST)])
    own = write(tmp_path / "own-2.8.0.jsonl", "2.8.0", [result("2.8.0", "2.8.0")])
    elsewhere = write(tmp_path / "x.jsonl", "2.14.1", [result("2.8.0", "2.14.1")])
    code = main(["ladder-report", "--rung", *first, "--rung", str(own), str(elsewhere)])
    assert code == 2
    assert "loaded under torch 2.14.1, the others under 2.15.0" in capsys.readouterr().err


def test_a_cell_in_a_column_its_release_cannot_save_is_shown_as_it_ended(tmp_path: Path) -> None:
    # 2.6.0 saves no DCP on the CPU: a run that tried anyway shows its cells, not "not saved"
    dcp = result("2.6.0", NEWEST, Outcome.ERROR, fmt=Format.DCP, recipe="dcp_no_dist")
    own, crossing = rung(tmp_path, "2.6.0", [dcp])
    ladder = climb([(read_results(Path(own)), read_results(Path(crossing)))])
    assert entry(ladder.rungs[0], "dcp fsdp2x2") == "FAIL 1 (error 1)"
    assert entry(ladder.rungs[0], "dcp fsdp2x1").startswith("not saved: torch 2.6.0's FSDP2")
    assert not ladder.holds


@pytest.mark.parametrize(
    ("saved", "loaded", "named"),
    [
        ("2.15.0", NEWEST, "the release that saved"),
        ("unknown", NEWEST, "not a release version"),
        ("2.3.1", NEWEST, "the ladder takes torch 2.4.0 or newer"),
    ],
)
def test_results_that_make_no_rung_are_refused_as_unusable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: str, loaded: str, named: str
) -> None:
    own = write(tmp_path / "own.jsonl", saved, [result(saved, saved)])
    crossing = write(tmp_path / "cross.jsonl", loaded, [result(saved, loaded)])
    assert main(["ladder-report", "--rung", str(own), str(crossing)]) == 2
    assert named in capsys.readouterr().err


def test_the_ladders_lists_are_in_id_order_whatever_order_the_cells_finished_in(
    tmp_path: Path,
) -> None:
    models = ["trap", "tied", "block", "dropout"]  # as two jobs might finish them
    cells = [result("2.8.0", NEWEST, Outcome.FAIL, model=model) for model in models]
    own, crossing = rung(tmp_path, "2.8.0", cells)
    verified = write(tmp_path / "golden.jsonl", NEWEST, cells)
    ladder = climb(
        [(read_results(Path(own)), read_results(Path(crossing)))], [read_results(verified)]
    )
    in_order = sorted(models)
    assert [r.cell.model for r in ladder.rungs[0].failing()] == in_order
    assert [r.cell.model for r in ladder.golden_failures] == in_order
    text = to_markdown(ladder)
    under_itself = text.split("Under itself, not as predicted", 1)[1].split("\n\n", 2)[1]
    assert [line.split("model=")[1].split("-")[0] for line in under_itself.splitlines()[2:]] == (
        in_order
    )
