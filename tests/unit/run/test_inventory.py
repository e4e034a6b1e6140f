"""Inventory parsing on recorded nvidia-smi outputs (tests/data/inventory)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.run.inventory import (
    Inventory,
    InventoryError,
    Runner,
    apply_outer_visibility,
    from_nvidia_smi,
    parse_query_csv,
    read_nvidia_smi,
    simulated,
)

DATA = Path(__file__).parents[2] / "data" / "inventory"


def recorded(name: str, outer: str | None = None) -> Inventory:
    def read(part: str) -> str:
        return (DATA / f"{name}.{part}").read_text()

    return from_nvidia_smi(read("query.csv"), read("list.txt"), read("header.txt"), outer)


@pytest.mark.parametrize(
    ("name", "count", "driver", "cuda"),
    [
        ("1gpu", 1, "550.54.15", "12.4"),
        ("2gpu", 2, "535.216.01", "12.2"),
        ("4gpu", 4, "550.90.12", "12.4"),
        ("8gpu", 8, "580.95.05", "13.0"),
        ("mig", 2, "535.216.01", "12.2"),
    ],
)
def test_recorded_inventories(name: str, count: int, driver: str, cuda: str) -> None:
    inventory = recorded(name)
    assert inventory.indices == tuple(range(count))
    assert inventory.driver_version == driver
    assert inventory.cuda_version == cuda
    assert all(gpu.uuid.startswith("GPU-") for gpu in inventory.gpus)
    assert len(set(inventory.uuids.values())) == count
    assert f"GPU {count - 1}: " in inventory.describe()


def test_geforce_reports_no_mig_mode() -> None:
    (gpu,) = recorded("1gpu").gpus
    assert gpu.mig_enabled is False
    assert gpu.memory_mib == 24564


def test_mig_instances_are_attached_and_used_one_per_process() -> None:
    inventory = recorded("mig")
    plain, mig = inventory.gpus
    assert not plain.mig_enabled
    assert plain.device_uuid == plain.uuid
    assert mig.mig_enabled
    assert len(mig.mig_uuids) == 2
    assert mig.device_uuid == mig.mig_uuids[0]
    assert mig.device_uuid.startswith("MIG-")
    assert any("MIG" in note for note in inventory.notes)
    assert "MIG on (2 instances)" in inventory.describe()


def test_outer_visibility_by_index_keeps_its_order() -> None:
    inventory = recorded("4gpu", outer="2,3")
    assert inventory.indices == (2, 3)
    assert recorded("4gpu", outer="3,2").indices == (3, 2)
    assert inventory.outer_visible == "2,3"


def test_outer_visibility_by_uuid_and_prefix() -> None:
    gpus = recorded("4gpu").gpus
    assert recorded("4gpu", outer=gpus[1].uuid).indices == (1,)
    assert recorded("4gpu", outer=f"{gpus[3].uuid[:12]},{gpus[0].uuid}").indices == (3, 0)


def test_outer_visibility_minus_one_and_empty_hide_everything() -> None:
    assert recorded("4gpu", outer="-1").gpus == ()
    assert recorded("4gpu", outer="").gpus == ()
    assert recorded("4gpu", outer=None).indices == (0, 1, 2, 3)


def test_outer_visibility_by_mig_uuid() -> None:
    mig = recorded("mig").gpus[1]
    inventory = recorded("mig", outer=mig.mig_uuids[1])
    assert inventory.indices == (1,)
    assert inventory.gpus[0].device_uuid == mig.mig_uuids[1]


@pytest.mark.parametrize(
    ("outer", "words"),
    [("7", "matches no GPU"), ("GPU-", "matches several GPUs"), ("0,0", "listed twice")],
)
def test_bad_outer_visibility_names_the_entry(outer: str, words: str) -> None:
    with pytest.raises(InventoryError, match=words):
        apply_outer_visibility(recorded("4gpu").gpus, outer)


def test_malformed_csv_names_the_line() -> None:
    with pytest.raises(InventoryError, match=r"line 1: expected 6 fields"):
        parse_query_csv("0, GPU-x, name\n")
    with pytest.raises(InventoryError, match=r"line 1: bad index or UUID"):
        parse_query_csv("x, GPU-1, n, 1, Disabled, 1\n")


def test_zero_gpus_when_nvidia_smi_finds_none(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = (DATA / "0gpu.stderr.txt").read_text()

    class NoDevices(Runner):
        def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
            self.calls.append(argv)
            return subprocess.CompletedProcess(argv, 6, stdout="", stderr=stderr)

    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi")
    runner = NoDevices()
    inventory = read_nvidia_smi(None, runner)
    assert inventory.gpus == ()
    assert "No devices were found" in inventory.notes[0]
    assert runner.calls[0][0] == "nvidia-smi"
    assert "--format=csv,noheader,nounits" in runner.calls[0]
    assert "no GPU: CPU fallback" in inventory.describe()


def test_nvidia_smi_reader_uses_all_three_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {
        "--query-gpu": (DATA / "2gpu.query.csv").read_text(),
        "-L": (DATA / "2gpu.list.txt").read_text(),
        "": (DATA / "2gpu.header.txt").read_text(),
    }

    class Recorded(Runner):
        def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
            key = argv[1].split("=")[0] if len(argv) > 1 else ""
            return subprocess.CompletedProcess(argv, 0, stdout=outputs[key], stderr="")

    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi")
    inventory = read_nvidia_smi("1", Recorded())
    assert inventory.indices == (1,)
    assert inventory.cuda_version == "12.2"


def test_no_nvidia_smi_is_the_cpu_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert read_nvidia_smi(None).gpus == ()


def test_simulated_inventory_is_marked() -> None:
    inventory = simulated(4)
    assert inventory.simulated
    assert inventory.indices == (0, 1, 2, 3)
    assert "SIMULATED" in inventory.describe()
    assert inventory.to_json()["simulated"] is True
    with pytest.raises(InventoryError, match="--simulate-gpus -1"):
        simulated(-1)
