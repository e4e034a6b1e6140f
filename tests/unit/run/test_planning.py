"""Planning with --min-gpus: which cells a runner keeps, and an error that names the fix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.run.inventory import simulated
from harness.run.options import RunOptions
from harness.run.planning import TooFewGpus, plan_matrix

WEIGHTS = "model=trap- and fmt=weights"


def test_a_runner_keeps_the_cells_that_see_as_many_gpus_as_it_asks() -> None:
    options = RunOptions(select=WEIGHTS, min_gpus=2)
    planned = plan_matrix(options, inventory=simulated(2))
    everything = plan_matrix(replace(options, min_gpus=0), inventory=simulated(2)).cells
    assert planned.cells == tuple(cell for cell in everything if cell.gpus >= 2)
    assert planned.matrix.cells == planned.cells  # what shards would cut


def test_two_mig_gpus_serve_min_gpus_2_with_a_process_on_each() -> None:
    # a MIG-enabled GPU is given to a process alone, but a cell's two processes may each see one
    two = simulated(2)
    mig = tuple(replace(gpu, mig_enabled=True, mig_uuids=(f"MIG-{gpu.index}",)) for gpu in two.gpus)
    planned = plan_matrix(RunOptions(select=WEIGHTS, min_gpus=2), inventory=replace(two, gpus=mig))
    assert planned.cells
    assert all(cell.gpus == 2 for cell in planned.cells)
    assert all(len(c.save_visibility) == len(c.load_visibility) == 1 for c in planned.cells)


def test_cells_that_run_on_the_cpu_alone_are_named_as_the_reason() -> None:
    with pytest.raises(TooFewGpus) as raised:
        plan_matrix(RunOptions(select="fsdp2x3", min_gpus=1), inventory=simulated(2))
    assert "its cells see at most 0); lower it, or keep cells that run on GPUs" in str(raised.value)
