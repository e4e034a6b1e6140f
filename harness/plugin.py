"""pytest plugin (entry point ``pytest11``): the matrix as parametrized tests.

A test that asks for the ``ckpt_cell`` fixture is parametrized with every cell of the scenarios
(``--ckpt-scenarios``, default: the shipped ones) under the GPU subsets of ``--ckpt-visibility``
on this machine's GPUs (none: the CPU fallback), each with its readable id; ``ckpt_result`` runs
that cell, once per run (:func:`run_once`). Artifacts are saved once per run and GPU leases are
taken in a folder of the run's base temp directory, shared by pytest-xdist workers. The plugin
costs little when unused: it imports nothing from torch; its options come from
``harness.run.options`` (the table the CLI's options come from too), and the rest is imported
when a test asks for a cell.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.core.cell import Cell
    from harness.core.results import CellResult
    from harness.run.options import RunOptions
    from harness.run.planning import Planned
    from harness.run.runner import CellRunner


def pytest_addoption(parser: pytest.Parser) -> None:
    from harness.run.options import add_options

    group = parser.getgroup("ckpt-matrix", "ckpt-matrix conformance cells")
    add_options(group.addoption, "plugin")


_PLANNED = pytest.StashKey["Planned"]()


def _options(config: pytest.Config) -> RunOptions:
    from harness.run.options import RunOptions

    return RunOptions.read(config.getoption, "plugin")


def _planned(config: pytest.Config) -> Planned:
    """The cells of this run (planned once per pytest process), through the CLI's own path."""
    from harness.core.errors import UserError
    from harness.run.planning import plan_matrix

    if _PLANNED not in config.stash:
        try:
            config.stash[_PLANNED] = plan_matrix(_options(config))
        except UserError as exc:  # scenario, option, shard, inventory and policy errors
            raise pytest.UsageError(f"ckpt-matrix: {exc}") from None
    return config.stash[_PLANNED]


def pytest_configure(config: pytest.Config) -> None:
    # An explicit --ckpt-scenarios is checked before collection, so a bad file is a usage
    # error with its own message rather than a collection error in some test module.
    if config.getoption("ckpt_scenarios", None) is not None:
        _planned(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ckpt_cell" not in metafunc.fixturenames:
        return
    cells = _planned(metafunc.config).cells
    metafunc.parametrize("ckpt_cell", cells, ids=[cell.id for cell in cells])


@pytest.fixture(scope="session")
def ckpt_runner(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[CellRunner]:
    """One cell runner per pytest process, sharing artifacts and leases across xdist workers."""
    from filelock import FileLock

    from harness.run.usecase import MatrixWork

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder all workers of this run share
    workdir = base / "ckpt-matrix"
    workdir.mkdir(parents=True, exist_ok=True)
    work = MatrixWork(planned=_planned(pytestconfig), options=_options(pytestconfig))
    launcher = work.open_launcher(workdir)
    try:
        environment_path = workdir / "environment.json"
        with FileLock(str(environment_path) + ".lock"):
            if environment_path.exists():
                environment = json.loads(environment_path.read_text(encoding="utf-8"))
            else:
                environment = work.environment(launcher, workdir)
                environment_path.write_text(json.dumps(environment), encoding="utf-8")
        yield work.runner(launcher, workdir, environment)
    finally:
        launcher.stop_all()


def run_once(runner: CellRunner, cell: Cell) -> CellResult:
    """The cell's result, run once per pytest run: the first test to ask for it, in any
    pytest-xdist worker, runs it and records it beside its load's files (``result.json`` in
    the cell's folder of the run's shared work folder); a test that asks again reads what was
    recorded. A test that compares launchers takes the zygote's cells from here, so the
    conformance matrix's cells do not run twice."""
    from filelock import FileLock

    from harness.core.results import CellResult

    folder = runner.factory.cell_folder(cell)
    folder.mkdir(parents=True, exist_ok=True)
    recorded = folder / "result.json"
    with FileLock(str(folder / "result.lock")):
        if recorded.exists():
            return CellResult.from_json(json.loads(recorded.read_text(encoding="utf-8")))
        result = runner.run_cell(cell)
        recorded.write_text(json.dumps(result.to_json()), encoding="utf-8")
        return result


@pytest.fixture
def ckpt_result(
    ckpt_cell: Cell, ckpt_runner: CellRunner, request: pytest.FixtureRequest
) -> CellResult:
    """The cell, run: saved (once per artifact) and loaded in separate processes, and judged.

    The outcome, the expectation and what was observed go into the test's user properties, so
    ``--junitxml`` carries them for CI systems that read JUnit XML."""
    from harness.launchers import LauncherBroken

    try:
        result = run_once(ckpt_runner, ckpt_cell)
    except LauncherBroken as exc:
        # stop the session (pytest-xdist honours shouldstop in each worker) and fail this test
        reason = f"ckpt-matrix: the run stopped: {exc} (--ckpt-launcher spawn avoids the zygote)"
        request.session.shouldstop = reason
        pytest.fail(reason, pytrace=False)
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
