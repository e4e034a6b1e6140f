"""pytest plugin (entry point ``pytest11``): the matrix as parametrized tests.

A test that asks for the ``ckpt_cell`` fixture is parametrized with every cell of the scenarios
(``--ckpt-scenarios``, default: the shipped ones) under the GPU subsets of ``--ckpt-visibility``
on this machine's GPUs (none: the CPU fallback), each with its readable id; ``ckpt_result`` runs
that cell. Artifacts are saved once per run and GPU leases are taken in a folder of the run's
base temp directory, shared by pytest-xdist workers. The plugin costs nothing when unused: it
imports nothing from torch, and nothing at all until a test asks for a cell.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.cell import Cell
    from harness.inventory import Inventory
    from harness.results import CellResult
    from harness.session import CellRunner


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ckpt-matrix", "ckpt-matrix conformance cells")
    group.addoption(
        "--ckpt-scenarios",
        type=Path,
        default=None,
        help="scenario TOML file or folder for the ckpt_cell tests (default: the shipped set)",
    )
    group.addoption(
        "--ckpt-visibility",
        default="minimal",
        help="GPU subsets: minimal, pairs, all[:K] or sample:N (default: minimal)",
    )
    group.addoption(
        "--ckpt-timeout",
        type=float,
        default=None,
        help="seconds each worker process may run (default: 120)",
    )
    group.addoption(
        "--ckpt-launcher",
        choices=("spawn", "zygote"),
        default="spawn",
        help="spawn: a fresh interpreter per worker (default); zygote: forked from one process "
        "that has imported torch (faster)",
    )
    group.addoption(
        "--ckpt-gpu-slots",
        type=int,
        default=1,
        help="worker processes that may share one GPU at once (default 1: each has it alone)",
    )


_CELLS = pytest.StashKey["tuple[Cell, ...]"]()
_INVENTORY = pytest.StashKey["Inventory"]()


def _inventory(config: pytest.Config) -> Inventory:
    from harness.inventory import InventoryError, read_inventory

    if _INVENTORY not in config.stash:
        try:
            config.stash[_INVENTORY] = read_inventory(os.environ)
        except InventoryError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_INVENTORY]


def _load_cells(config: pytest.Config) -> tuple[Cell, ...]:
    from harness.matrix import expand
    from harness.scenarios import ScenarioError, default_scenarios_dir, load_scenarios
    from harness.visibility import parse_policy, subsets

    path = config.getoption("ckpt_scenarios")
    try:
        policy = parse_policy(config.getoption("ckpt_visibility"), "--ckpt-visibility")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    inventory = _inventory(config)
    single_only = {gpu.index for gpu in inventory.gpus if gpu.mig_enabled}
    chosen = subsets(policy, inventory.indices, single_only=single_only)
    try:
        return expand(load_scenarios(path or default_scenarios_dir()), subsets=chosen).cells
    except ScenarioError as exc:
        raise pytest.UsageError(f"--ckpt-scenarios: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    # An explicit --ckpt-scenarios is checked before collection, so a bad file is a usage
    # error with its own message rather than a collection error in some test module.
    if config.getoption("ckpt_scenarios", None) is not None:
        config.stash[_CELLS] = _load_cells(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ckpt_cell" not in metafunc.fixturenames:
        return
    stash = metafunc.config.stash
    if _CELLS not in stash:
        stash[_CELLS] = _load_cells(metafunc.config)
    cells = stash[_CELLS]
    metafunc.parametrize("ckpt_cell", cells, ids=[cell.id for cell in cells])


@pytest.fixture(scope="session")
def ckpt_runner(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[CellRunner]:
    """One cell runner per pytest process, sharing artifacts and leases across xdist workers."""
    from filelock import FileLock

    from harness.environment import describe, torch_environment
    from harness.oracle import parse_torch_version
    from harness.plan import DEFAULT_TIMEOUT_S, DeviceMap
    from harness.session import build_runner

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder all workers of this run share
    workdir = base / "ckpt-matrix"
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = _inventory(pytestconfig)
    environment_path = workdir / "environment.json"
    with FileLock(str(environment_path) + ".lock"):
        if environment_path.exists():
            environment = json.loads(environment_path.read_text(encoding="utf-8"))
        else:
            policy = pytestconfig.getoption("ckpt_visibility")
            environment = describe(
                torch_environment(inventory),
                inventory,
                visibility_policy=policy,
                gpu_slots=pytestconfig.getoption("ckpt_gpu_slots"),
                launcher=pytestconfig.getoption("ckpt_launcher"),
            )
            environment_path.write_text(json.dumps(environment), encoding="utf-8")
    runner = build_runner(
        workdir=workdir,
        timeout_s=pytestconfig.getoption("ckpt_timeout") or DEFAULT_TIMEOUT_S,
        devices=DeviceMap(inventory.uuids),
        torch_version=parse_torch_version(environment["torch"]),
        gpu_slots=pytestconfig.getoption("ckpt_gpu_slots"),
        launcher=pytestconfig.getoption("ckpt_launcher"),
        torchvision=environment.get("torchvision") is not None,
    )
    yield runner
    runner.launcher.stop_all()


@pytest.fixture
def ckpt_result(
    ckpt_cell: Cell, ckpt_runner: CellRunner, request: pytest.FixtureRequest
) -> CellResult:
    """The cell, run: saved (once per artifact) and loaded in separate processes, and judged.

    The outcome, the expectation and what was observed go into the test's user properties, so
    ``--junitxml`` carries them for CI systems that read JUnit XML."""
    result = ckpt_runner.run_cell(ckpt_cell)
    observed = result.observed or {}
    request.node.user_properties.extend(
        [
            ("ckpt_cell_id", result.id),
            ("ckpt_outcome", str(result.outcome)),
            ("ckpt_expected", json.dumps(result.expected.to_json(), sort_keys=True)),
            ("ckpt_observed_status", str(observed.get("status", "none"))),
            ("ckpt_observed_error_class", str(observed.get("error_class", "none"))),
            ("ckpt_reason", result.reason),
        ]
    )
    return result
