"""The device-mesh scenarios (scenarios/mesh) in the suite: tensor parallelism, FSDP2 with it on
a 2-D mesh and HSDP each save once and load once on another of them, through DCP, on the
matrix's zygote; one loads into a plain process and one from it. ``nox -s mesh`` runs the whole
square (every shape of 2 and 4 ranks into every other)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.core.cell import Cell, layout_label
from harness.core.matrix import expand
from harness.core.outcomes import Outcome
from harness.core.scenarios import default_scenarios_dir, load_scenarios
from harness.run.runner import CellRunner

# a cycle through the shapes: each saves once and loads once; the first pair splits the forward
# over the same 2 tensor-parallel ranks on both sides, the others over 2 and 1, or 1 and 2
CYCLE = ("tpx2", "fsdp2[dp2,tp2]", "hsdp[rep2,shard2]")
PAIRS = {(CYCLE[i], CYCLE[(i + 1) % len(CYCLE)]) for i in range(len(CYCLE))}


@pytest.mark.slow
def test_each_mesh_shape_saves_and_loads_on_another_bitwise(ckpt_runner: CellRunner) -> None:
    matrix = expand(load_scenarios(default_scenarios_dir() / "mesh"), subsets=[])

    def shapes(cell: Cell) -> tuple[str, str]:
        return (
            layout_label(cell.save_layout, cell.save_world),
            layout_label(cell.load_layout, cell.load_world),
        )

    cells = [c for c in matrix.cells if c.recipe == "dcp_reshard" and shapes(c) in PAIRS]
    cells += [
        c
        for c in matrix.cells
        if (c.recipe, *shapes(c))
        in {
            ("dcp_no_dist", "hsdp[rep2,shard2]", "single"),
            ("torch_save_to_dcp", "single", "fsdp2[dp2,tp2]"),
        }
    ]
    assert len(cells) == 5
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = {shapes(r.cell): r for r in pool.map(ckpt_runner.run_cell, cells)}
    for result in results.values():
        assert result.outcome is Outcome.PASS, result.describe()
        assert result.observed is not None
        # the block's 9 tensors, and with DCP between meshes AdamW's 3 for each of them
        resharded = result.cell.recipe == "dcp_reshard"
        assert result.observed["tensors"] == (36 if resharded else 9)
    # the same split: the outputs are compared, and equal; another split: not compared, said why
    same = results[("tpx2", "fsdp2[dp2,tp2]")].observed
    assert same is not None
    assert same["output_equal"] is True
    other = results[("fsdp2[dp2,tp2]", "hsdp[rep2,shard2]")]
    assert other.observed is not None
    assert other.observed["output_equal"] is None
    assert "tensor parallel over 2 rank(s) at the save, 1 at the load" in other.reason
