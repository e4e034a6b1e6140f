"""What a user chooses for a run, and how both front doors (the CLI and the pytest plugin) turn it
into cells and a runner: one path, so an option is added once, not twice.

``plan_matrix`` reads the inventory, chooses the GPU subsets, expands the scenarios and keeps
this shard's cells (cheap: no torch). ``open_launcher`` makes the run's launcher;
``run_environment`` reads the torch side in one of its workers and describes the run for the
results file; ``open_runner`` builds the runner on the same launcher.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.core.axes import Wrapper
from harness.core.cell import Cell, Visibility
from harness.core.devices import DeviceMap
from harness.core.errors import UserError
from harness.core.matrix import Matrix, expand
from harness.core.oracle import parse_torch_version
from harness.core.scenarios import ScenarioError, default_scenarios_dir, load_scenarios
from harness.core.shards import Shard, parse_shard, select, shard_record
from harness.core.visibility import Policy, parse_policy, subsets
from harness.core.zoo import ModelError, ModelTraits, is_import_path, model_spec
from harness.launchers import DEFAULT_LAUNCHER, LAUNCHERS, Launcher
from harness.launchers.zygote import PRELOAD_MODELS
from harness.run.environment import describe, torch_environment
from harness.run.inventory import Inventory, read_inventory, simulated
from harness.run.jobs import DEFAULT_TIMEOUT_S
from harness.run.runner import CellRunner, build_runner, leased_launcher

# How each front door spells its options, for errors ("--shard 5/4", "--ckpt-shard 5/4").
CLI_NAMES = {
    "scenarios": "--scenarios",
    "models": "--model",
    "visibility": "--visibility",
    "shard": "--shard",
    "timeout_s": "--timeout",
    "gpu_slots": "--gpu-slots",
    "launcher": "--launcher",
}
PLUGIN_NAMES = {
    "scenarios": "--ckpt-scenarios",
    "models": "--ckpt-model",
    "visibility": "--ckpt-visibility",
    "shard": "--ckpt-shard",
    "timeout_s": "--ckpt-timeout",
    "gpu_slots": "--ckpt-gpu-slots",
    "launcher": "--ckpt-launcher",
}


class OptionError(UserError):
    """An option the user gave cannot be used; the message names the option and the fix."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    scenarios: Path | None = None  # a TOML file or folder; None: the shipped scenarios
    select: str | None = None  # keep cells whose id contains this text
    # run the scenarios with these models instead of the ones they name (zoo names or a user's
    # package.module:factory)
    models: tuple[str, ...] = ()
    visibility: str = "minimal"
    shard: str | None = None  # K/N, slurm, indexed:N
    timeout_s: float = DEFAULT_TIMEOUT_S
    gpu_slots: int = 1
    launcher: str = DEFAULT_LAUNCHER
    simulate_gpus: int | None = None  # plan for N fake GPUs (never GPU evidence)
    names: Mapping[str, str] = field(default_factory=lambda: CLI_NAMES)

    def check(self) -> None:
        """The numeric and named options, each error naming the option as the user spelled it."""
        if self.timeout_s <= 0:
            raise OptionError(f"{self.names['timeout_s']} {self.timeout_s}: must be positive")
        if self.gpu_slots < 1:
            raise OptionError(f"{self.names['gpu_slots']} {self.gpu_slots}: must be at least 1")
        if self.launcher not in LAUNCHERS:
            raise OptionError(
                f"{self.names['launcher']} {self.launcher!r}: expected one of "
                f"{', '.join(LAUNCHERS)}"
            )


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


def open_launcher(
    planned: Planned,
    options: RunOptions,
    workdir: Path,
    environ: Mapping[str, str] | None = None,
) -> Launcher:
    """The run's launcher, behind its GPU leases; the zygote preloads torchvision and the
    distributed modules only where a planned cell needs them, and the modules of the user's
    models the cells name (unless ``CKPT_MATRIX_PRELOAD_MODELS=0``). Call ``stop_all()`` when
    done."""
    return leased_launcher(
        options.launcher,
        workdir,
        gpu_slots=options.gpu_slots,
        preload_torchvision=any(cell.model_spec.needs_torchvision for cell in planned.cells),
        # the distributed modules and torch._dynamo (fully_shard and torch.compile import it, and
        # so does the first torch.optim optimizer of a training cell's worker)
        preload_distributed=any(
            cell.save_layout.distributed
            or cell.load_layout.distributed
            or Wrapper.COMPILE in (cell.save_wrapper, cell.load_wrapper)
            or bool(cell.training)
            for cell in planned.cells
        ),
        preload_modules=user_modules(planned.cells, os.environ if environ is None else environ),
    )


def user_modules(cells: Sequence[Cell], environ: Mapping[str, str]) -> tuple[str, ...]:
    """The modules of the user's models (``package.module`` of ``package.module:factory``) that
    the zygote imports once for all its children; none where ``CKPT_MATRIX_PRELOAD_MODELS`` is
    ``0`` (each worker imports them, as under the spawn launcher)."""
    value = environ.get(PRELOAD_MODELS, "1")
    if value not in ("0", "1"):
        raise OptionError(
            f"environment variable {PRELOAD_MODELS}={value!r}: expected 1 (the zygote imports "
            "your model's module once, the default) or 0 (each worker imports it)"
        )
    if value == "0":
        return ()
    names = (cell.model for cell in cells if is_import_path(cell.model))
    return tuple(sorted({name.partition(":")[0] for name in names}))


def run_environment(
    planned: Planned, options: RunOptions, launcher: Launcher, workdir: Path
) -> dict[str, Any]:
    """The results file's environment line: torch's side (read by one of the run's own workers,
    which sees the run's GPUs) with each model's traits measured there, the machine, and the
    run's choices (visibility, launcher, GPU slots, shard). A model that cannot be imported or
    built is a ``ModelError`` here, before any cell runs."""
    models = sorted({cell.model for cell in planned.cells})
    torch_side = torch_environment(
        planned.inventory,
        launcher=launcher,
        workdir=workdir,
        models=models,
        timeout_s=options.timeout_s,
    )
    failures = [found["error"] for found in torch_side["models"].values() if "error" in found]
    if failures:
        raise ModelError("; ".join(failures))
    return describe(
        torch_side,
        planned.inventory,
        visibility_policy=options.visibility,
        gpu_slots=options.gpu_slots,
        launcher=options.launcher,
        shard=None if planned.shard is None else shard_record(planned.shard, planned.matrix.cells),
    )


def open_runner(
    planned: Planned,
    options: RunOptions,
    environment: Mapping[str, Any],
    workdir: Path,
    launcher: Launcher,
) -> CellRunner:
    """The runner for the planned cells, on ``launcher`` (from ``open_launcher``)."""
    return build_runner(
        workdir=workdir,
        timeout_s=options.timeout_s,
        devices=DeviceMap(planned.inventory.uuids),
        torch_version=parse_torch_version(environment["torch"]),
        launcher=launcher,
        torchvision=environment.get("torchvision") is not None,
        traits={
            name: ModelTraits.from_json(found["traits"])
            for name, found in (environment.get("models") or {}).items()
        },
    )
