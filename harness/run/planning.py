"""From options to cells: read the inventory (or simulate one), choose the GPU subsets, expand
the scenarios (``-k`` applied) and keep this shard's cells. Cheap: no torch, no process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from harness.core.cell import Cell, Visibility
from harness.core.matrix import Matrix, expand
from harness.core.scenarios import ScenarioError, default_scenarios_dir, load_scenarios
from harness.core.shards import Shard, parse_shard, select
from harness.core.visibility import Policy, parse_policy, subsets
from harness.core.zoo import model_spec
from harness.run.inventory import Inventory, read_inventory, simulated
from harness.run.options import OptionError, RunOptions


@dataclass(frozen=True, kw_only=True)
class Planned:
    inventory: Inventory
    subsets: tuple[Visibility, ...]
    matrix: Matrix  # every cell of the scenarios (after -k), before sharding
    shard: Shard | None
    cells: tuple[Cell, ...]  # what this run runs: the shard's cells, or all of them


def machine_inventory(options: RunOptions, environ: Mapping[str, str]) -> Inventory:
    if options.simulate_gpus is not None:
        return simulated(options.simulate_gpus)
    return read_inventory(environ)


def chosen_subsets(policy: Policy, inventory: Inventory) -> list[Visibility]:
    single_only = {gpu.index for gpu in inventory.gpus if gpu.mig_enabled}
    return subsets(policy, inventory.indices, single_only=single_only)


class TooFewGpus(OptionError):
    """No cell of the matrix sees as many GPUs as ``--min-gpus`` asks."""


def with_gpus(matrix: Matrix, options: RunOptions, inventory: Inventory) -> Matrix:
    """The matrix's cells that see at least ``options.min_gpus`` GPUs (before sharding: the
    shards' matrix is this one)."""
    kept = tuple(cell for cell in matrix.cells if cell.gpus >= options.min_gpus)
    if kept:
        return replace(matrix, cells=kept)
    most = max(cell.gpus for cell in matrix.cells)
    if len(inventory.gpus) < options.min_gpus:
        fix = "run on a runner with more GPUs"
    elif most == 0:
        fix = "keep cells that run on GPUs (-k, --scenarios: these run on the CPU alone)"
    else:
        fix = f"choose a --visibility with larger subsets than {options.visibility!r}"
    raise TooFewGpus(
        f"{options.names['min_gpus']} {options.min_gpus}: no cell needs that many GPUs "
        f"(this machine gives {len(inventory.gpus)}; its cells see at most {most}); lower it, "
        f"or {fix}"
    )


def plan_matrix(
    options: RunOptions,
    environ: Mapping[str, str] | None = None,
    *,
    inventory: Inventory | None = None,
) -> Planned:
    environ = os.environ if environ is None else environ
    options.check()
    inventory = inventory or machine_inventory(options, environ)
    policy = parse_policy(options.visibility, options.names["visibility"])
    chosen = chosen_subsets(policy, inventory)
    path = options.scenarios if options.scenarios is not None else default_scenarios_dir()
    try:
        scenarios = load_scenarios(path)
    except ScenarioError as exc:
        raise ScenarioError(f"{options.names['scenarios']}: {exc}") from None
    if options.models:
        for name in options.models:
            model_spec(name, f"{options.names['models']} {name}")
        scenarios = [replace(scenario, models=options.models) for scenario in scenarios]
    matrix = expand(scenarios, subsets=chosen, select=options.select)
    if not matrix.cells:
        matching = f" match -k {options.select!r}" if options.select else ""
        raise OptionError(f"no cells in {path}{matching}")
    if options.min_gpus:
        matrix = with_gpus(matrix, options, inventory)
    shard = None
    cells = matrix.cells
    if options.shard is not None:
        shard = parse_shard(options.shard, options.names["shard"], environ)
        cells = select(matrix.cells, shard)
    return Planned(
        inventory=inventory,
        subsets=tuple(chosen),
        matrix=matrix,
        shard=shard,
        cells=cells,
    )
