"""What a user chooses for a run: every option's spelling (in the CLI and in the pytest plugin),
default, help and check, defined once; both front doors build their parsers from ``OPTIONS``.

Kept light: the plugin reads this table when pytest starts, before any test asks for a cell.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from harness.core.errors import UserError
from harness.launchers import DEFAULT_LAUNCHER, LAUNCHERS
from harness.run.jobs import DEFAULT_TIMEOUT_S

Door = Literal["cli", "plugin"]
ABSENT: Any = object()  # an option the parsing command does not have


class OptionError(UserError):
    """An option the user gave cannot be used; the message names the option and the fix."""


def cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class Option:
    """One option of a run: the ``RunOptions`` field it sets, its spelling in each front door
    (``plugin=None``: the CLI's alone; pytest runs the cells itself), and its argparse details."""

    field: str
    cli: str
    plugin: str | None
    help: str
    short: str | None = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeat: bool = False  # may be given again; the values are collected

    def arguments(self, door: Door) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The flags and keyword arguments of ``add_argument`` (argparse) or ``addoption``
        (pytest) for this option in ``door``."""
        flag = self.cli if door == "cli" else self.plugin
        if flag is None:
            raise ValueError(f"{self.field} is not an option of the {door}")
        flags = (self.short, flag) if self.short and door == "cli" else (flag,)
        default = DEFAULTS[self.field]
        kwargs: dict[str, Any] = {
            "dest": self.field if door == "cli" else f"ckpt_{self.field}",
            "help": f"{self.help} (default: {shown(default)})",
        }
        if self.repeat:
            kwargs.update(action="append", default=[])
        else:
            kwargs["default"] = default
        for name in ("type", "metavar", "choices"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return flags, kwargs


def shown(default: Any) -> str:
    if default is None or default == ():
        return "none"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    scenarios: Path | None = None  # a TOML file or folder; None: the shipped scenarios
    select: str | None = None  # a -k expression over the cell ids (harness.core.selection)
    # run the scenarios with these models instead of the ones they name (zoo names or a user's
    # package.module:factory)
    models: tuple[str, ...] = ()
    visibility: str = "minimal"
    shard: str | None = None  # K/N, slurm, indexed:N
    min_gpus: int = 0  # only the cells whose processes see at least this many GPUs together
    timeout_s: float = DEFAULT_TIMEOUT_S
    gpu_slots: int = 1
    launcher: str = DEFAULT_LAUNCHER
    jobs: int = field(default_factory=cpu_count)  # cells at a time
    rerun_errors: int = 0  # more attempts for a cell that ends ERROR
    simulate_gpus: int | None = None  # plan for N fake GPUs (never GPU evidence)
    door: Door = "cli"  # which front door's spellings the errors use

    @property
    def names(self) -> Mapping[str, str]:
        return CLI_NAMES if self.door == "cli" else PLUGIN_NAMES

    @classmethod
    def read(cls, value: Callable[[str], Any], door: Door, **more: Any) -> RunOptions:
        """The options ``door`` parsed: ``value(dest)`` is each option's parsed value
        (``getattr(namespace, dest, ABSENT)`` or pytest's ``config.getoption``), ``ABSENT``
        for an option the command does not have."""
        given: dict[str, Any] = {}
        for option in OPTIONS:
            if (option.plugin if door == "plugin" else option.cli) is None:
                continue
            found = value(option.field if door == "cli" else f"ckpt_{option.field}")
            if found is ABSENT:  # a command without this option
                continue
            given[option.field] = tuple(found) if option.repeat else found
        return cls(**given, door=door, **more)

    def check(self) -> None:
        """Every numeric and named option, each error naming the option as the user spelled it."""
        names = self.names
        if self.timeout_s <= 0:
            raise OptionError(f"{names['timeout_s']} {self.timeout_s}: must be more than 0 seconds")
        if self.gpu_slots < 1:
            raise OptionError(f"{names['gpu_slots']} {self.gpu_slots}: must be at least 1")
        if self.launcher not in LAUNCHERS:
            raise OptionError(
                f"{names['launcher']} {self.launcher!r}: expected one of {', '.join(LAUNCHERS)}"
            )
        if self.min_gpus < 0:
            raise OptionError(f"{names['min_gpus']} {self.min_gpus}: must be 0 or more")
        if self.jobs < 1:
            raise OptionError(f"{names.get('jobs', '--jobs')} {self.jobs}: must be at least 1")
        if self.rerun_errors < 0:
            raise OptionError(
                f"{names.get('rerun_errors', '--rerun-errors')} {self.rerun_errors}: "
                "must be 0 or more"
            )


OPTIONS: tuple[Option, ...] = (
    Option(
        field="scenarios",
        cli="--scenarios",
        plugin="--ckpt-scenarios",
        type=Path,
        help="a scenario TOML file or a folder of them; none: the shipped scenarios/",
    ),
    Option(
        field="select",
        cli="--select",
        short="-k",
        plugin=None,  # pytest's own -k selects the plugin's cells
        metavar="EXPRESSION",
        help="keep only the cells an expression matches, as pytest's -k: words joined by and, "
        "or, not and parentheses; a word matches the ids containing it, whatever its case "
        '(e.g. "fsdp2 and not compile")',
    ),
    Option(
        field="models",
        cli="--model",
        plugin="--ckpt-model",
        repeat=True,
        metavar="NAME",
        help="run the scenarios with this model instead of the ones they name (repeatable): a "
        "zoo name, or your own as package.module:factory, imported from the current directory "
        "and PYTHONPATH",
    ),
    Option(
        field="visibility",
        cli="--visibility",
        plugin="--ckpt-visibility",
        help="GPU subsets: minimal, pairs, all[:K] or sample:N",
    ),
    Option(
        field="shard",
        cli="--shard",
        plugin="--ckpt-shard",
        metavar="K/N",
        help="only the K-th of N disjoint parts of the matrix (cells sharing a checkpoint stay "
        "together); 'slurm' reads a Slurm array's task id and count, 'indexed:N' a Kubernetes "
        "Indexed Job's JOB_COMPLETION_INDEX with N completions",
    ),
    Option(
        field="min_gpus",
        cli="--min-gpus",
        plugin="--ckpt-min-gpus",
        type=int,
        metavar="N",
        help="only the cells whose processes see N or more GPUs between them: on a runner "
        "with more GPUs, 2 leaves the CPU and one-GPU cells to a one-GPU runner, so that the "
        "two runners' results merge",
    ),
    Option(
        field="timeout_s",
        cli="--timeout",
        plugin="--ckpt-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds each worker process may run",
    ),
    Option(
        field="gpu_slots",
        cli="--gpu-slots",
        plugin="--ckpt-gpu-slots",
        type=int,
        metavar="N",
        help="worker processes that may share one GPU at once (1: each has it alone)",
    ),
    Option(
        field="launcher",
        cli="--launcher",
        plugin="--ckpt-launcher",
        choices=LAUNCHERS,
        help="zygote: workers forked from one process that has imported torch and never "
        "computes; spawn: a fresh interpreter per worker (slower, the same outcomes)",
    ),
    Option(
        field="jobs",
        cli="--jobs",
        plugin=None,  # pytest-xdist's -n sets how many cells run at once
        type=int,
        metavar="N",
        help="cells at a time (golden: files at a time)",
    ),
    Option(
        field="rerun_errors",
        cli="--rerun-errors",
        plugin=None,
        type=int,
        metavar="N",
        help="run a cell that ends ERROR again, in fresh processes with a fresh save, up to N "
        "more times; one that then passes is reported flaky, with every attempt recorded",
    ),
)

DEFAULTS: dict[str, Any] = {
    found.name: found.default for found in fields(RunOptions) if found.default is not MISSING
} | {"jobs": "the CPU count"}
CLI_NAMES = {option.field: option.cli for option in OPTIONS}
PLUGIN_NAMES = {option.field: option.plugin for option in OPTIONS if option.plugin is not None}
BY_FIELD = {option.field: option for option in OPTIONS}


def add_options(add: Callable[..., Any], door: Door, fields: tuple[str, ...] | None = None) -> None:
    """Add the options (all of ``door``'s, or those of ``fields``) with ``add``: an argparse
    parser's ``add_argument`` or a pytest group's ``addoption``."""
    for option in OPTIONS if fields is None else tuple(BY_FIELD[name] for name in fields):
        if (option.cli if door == "cli" else option.plugin) is None:
            continue
        flags, kwargs = option.arguments(door)
        if option.field == "jobs":
            kwargs["default"] = cpu_count()
        add(*flags, **kwargs)


def options_in(door: Door) -> Iterator[Option]:
    return (option for option in OPTIONS if (option.cli if door == "cli" else option.plugin))
