"""GPU cells that must run on real GPUs: they skip, saying how many GPUs they need, elsewhere.

The matrix itself (test_matrix.py) already runs every cell the visibility policy chooses on the
GPUs present; these tests pin the isolation guarantees on the smallest GPU counts that show them.
"""

from __future__ import annotations

import os

import pytest

from harness.core.axes import Format, Layout
from harness.core.cell import Cell
from harness.core.devices import normalise_uuid
from harness.core.outcomes import Outcome
from harness.run.inventory import Inventory, read_inventory
from harness.run.runner import CellRunner


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return read_inventory(os.environ)


def need_gpus(inventory: Inventory, count: int) -> tuple[int, ...]:
    found = len(inventory.gpus)
    if found < count:
        pytest.skip(f"needs {count} GPU{'s' if count > 1 else ''}, found {found}")
    return inventory.indices[:count]


@pytest.mark.slow
def test_each_process_sees_exactly_its_gpu(inventory: Inventory, ckpt_runner: CellRunner) -> None:
    (gpu,) = need_gpus(inventory, 1)
    cell = Cell(
        model="trap",
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=Format.WEIGHTS,
        recipe="as_saved",
        save_visibility=(gpu,),
        load_visibility=(gpu,),
        save_device="cuda:0",
    )
    result = ckpt_runner.run_cell(cell)
    assert result.outcome is Outcome.PASS, result.describe()
    assert result.observed is not None
    probe = result.observed["probe"]
    assert probe["device_count"] == 1
    assert [normalise_uuid(u) for u in probe["uuids"]] == [normalise_uuid(inventory.uuids[gpu])]
    assert result.observed["devices"] == ["cuda:0"]


@pytest.mark.slow
def test_reversed_order_puts_storages_on_the_other_physical_gpu(
    inventory: Inventory, ckpt_runner: CellRunner
) -> None:
    first, second = need_gpus(inventory, 2)
    cell = Cell(
        model="trap",
        save_layout=Layout.SINGLE,
        load_layout=Layout.SINGLE,
        format=Format.WHOLE,
        recipe="as_saved_whole",
        save_visibility=(first, second),
        load_visibility=(second, first),
        save_device="cuda:1",
    )
    result = ckpt_runner.run_cell(cell)
    assert result.outcome is Outcome.PASS, result.describe()
    assert result.observed is not None
    # saved on logical cuda:1 = physical `second`; loaded back to logical cuda:1 = physical
    # `first` under the reversed visibility: the loader's probe names which GPU that is
    uuids = [normalise_uuid(u) for u in result.observed["probe"]["uuids"]]
    assert uuids[1] == normalise_uuid(inventory.uuids[first])
    assert result.observed["devices"] == ["cuda:1"]
