"""Every run option is spelt, defaulted, helped and checked once (``OPTIONS``); the CLI and the
pytest plugin build their parsers from that table and read the same ``RunOptions`` back."""

from __future__ import annotations

import argparse

import pytest

from harness.cli import build_parser
from harness.run.options import ABSENT, OPTIONS, OptionError, RunOptions, add_options


def test_the_cli_reads_back_what_it_was_given_for_every_option() -> None:
    given = [
        *("run", "--timeout", "7", "--gpu-slots", "2", "--launcher", "spawn", "--jobs", "3"),
        *("--rerun-errors", "1", "--visibility", "pairs", "--shard", "1/2", "-k", "dcp"),
        *("--model", "trap", "--model", "tiny"),
    ]
    args = build_parser().parse_args(given)
    options = RunOptions.read(lambda name: getattr(args, name, ABSENT), "cli")
    assert (options.timeout_s, options.gpu_slots, options.launcher, options.jobs) == (
        7.0,
        2,
        "spawn",
        3,
    )
    assert (options.rerun_errors, options.visibility, options.shard, options.select) == (
        1,
        "pairs",
        "1/2",
        "dcp",
    )
    assert options.models == ("trap", "tiny")


def test_both_doors_take_the_same_defaults() -> None:
    cli = argparse.ArgumentParser()
    plugin = argparse.ArgumentParser()  # pytest's addoption takes argparse's arguments
    add_options(cli.add_argument, "cli")
    add_options(plugin.add_argument, "plugin")
    from_cli = RunOptions.read(lambda n: getattr(cli.parse_args([]), n, ABSENT), "cli")
    from_plugin = RunOptions.read(lambda n: getattr(plugin.parse_args([]), n, ABSENT), "plugin")
    shared = [option.field for option in OPTIONS if option.plugin is not None]
    assert shared, "the plugin has no options"
    for name in shared:
        assert getattr(from_cli, name) == getattr(from_plugin, name) == getattr(RunOptions(), name)


@pytest.mark.parametrize(
    ("door", "said"),
    [("cli", "--gpu-slots 0: must be at least 1"), ("plugin", "--ckpt-gpu-slots 0:")],
)
def test_a_check_names_the_option_as_its_door_spells_it(door: str, said: str) -> None:
    with pytest.raises(OptionError, match=said):
        RunOptions(gpu_slots=0, door=door).check()  # type: ignore[arg-type]
