"""Every mistake a user can make is a ``UserError``: exit 2 with what was wrong, where it came
from and the fix; anything else is a bug, with its traceback and another exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.core.errors import ConfigError, UserError
from harness.run.inventory import Gpu, apply_outer_visibility

GOOD = """
[[scenario]]
name = "tiny"
models = ["trap"]
save_layouts = ["dp"]
load_layouts = ["single"]
formats = ["weights"]
recipes = ["strip_prefix"]
"""


def scenario(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def results_file(tmp_path: Path, first: dict[str, object] | str) -> str:
    path = tmp_path / "r.jsonl"
    path.write_text((first if isinstance(first, str) else json.dumps(first)) + "\n")
    return str(path)


# (what is wrong, the arguments, an environment, text the message must hold)
CASES = [
    (
        "unknown scenario file",
        ["list", "--scenarios", "{tmp}/nowhere.toml"],
        {},
        ["nowhere.toml: no such scenario file"],
    ),
    (
        "unknown model",
        ["list", "--model", "vgg"],
        {},
        ["--model vgg", "unknown model 'vgg'", "the zoo has"],
    ),
    (
        "unknown model module",
        ["run", "--model", "nowhere_pkg:build", "--out", "{tmp}/r.jsonl", "--scenarios", "@good"],
        {},
        ["model nowhere_pkg:build: cannot import 'nowhere_pkg'", "PYTHONPATH="],
    ),
    (
        "unknown recipe",
        ["list", "--scenarios", "@recipe"],
        {},
        ["s.toml:2:scenario[0] (tiny).recipes", "unknown recipe 'strip'", "the catalogue has"],
    ),
    (
        "unknown layout",
        ["list", "--scenarios", "@layout"],
        {},
        ["s.toml:2:scenario[0] (tiny).save_layouts", "unknown layout 'ddx'", "expected one of"],
    ),
    (
        "unknown format",
        ["list", "--scenarios", "@format"],
        {},
        ["s.toml:2:scenario[0] (tiny).formats", "unknown format 'pickle'"],
    ),
    (
        "golden recipe in a scenario",
        ["list", "--scenarios", "@golden"],
        {},
        ["recipe 'golden' certifies your own files", "ckpt-matrix golden record"],
    ),
    (
        "unknown visibility policy",
        ["list", "--visibility", "some"],
        {},
        ["--visibility 'some'", "expected minimal, pairs"],
    ),
    (
        "unknown visibility mode",
        ["list", "--scenarios", "@mode"],
        {},
        ["s.toml:2:scenario[0] (tiny).visibility", "'wide' is not one of"],
    ),
    (
        "unknown launcher",
        ["run", "--launcher", "fork"],
        {},
        ["--launcher", "invalid choice: 'fork'"],
    ),
    (
        "TOML syntax error",
        ["list", "--scenarios", "@syntax"],
        {},
        ["s.toml: not valid TOML", "line 3", "fix the file there"],
    ),
    (
        "duplicate scenario name",
        ["list", "--scenarios", "@twice"],
        {},
        [
            "the scenario name 'tiny' is taken already",
            "b.toml:2:scenario[0]",
            "give each scenario its own name",
        ],
    ),
    ("--jobs 0", ["run", "--jobs", "0", "-k", "model=trap-"], {}, ["--jobs 0: must be at least 1"]),
    (
        "negative timeout",
        ["run", "--timeout", "-1", "-k", "model=trap-"],
        {},
        ["--timeout -1.0: must be more than 0 seconds"],
    ),
    ("--shard 5/4", ["list", "--shard", "5/4"], {}, ["--shard '5/4'"]),
    (
        "a Slurm index that is not a number",
        ["list", "--shard", "slurm"],
        {"SLURM_ARRAY_TASK_ID": "x"},
        ["SLURM_ARRAY_TASK_ID='x'"],
    ),
    (
        "a results file of another schema",
        ["report", "@schema"],
        {},
        ["r.jsonl:1: schema_version 99", "this harness reads 1"],
    ),
    ("not a results file", ["diff", "@notresults", "@notresults"], {}, ["r.jsonl:1: not JSON"]),
    ("an empty results file", ["report", "@empty"], {}, ["r.jsonl: empty results file"]),
    (
        "a results file that is not UTF-8",
        ["report", "@binary"],
        {},
        ["r.jsonl: not a results file (byte", "is not UTF-8 text"],
    ),
    (
        "a cell line whose fields are malformed",
        ["diff", "@badcell", "@badcell"],
        {},
        ["r.jsonl:2: not a cell result", "'observed' is str"],
    ),
    (
        "a report written where no folder is",
        ["report", "@goodresults", "--markdown", "{tmp}/nowhere/x.md"],
        {},
        ["nowhere/x.md: No such file or directory", "check the path"],
    ),
    (
        "an absurd shard count",
        ["list", "--shard", "1/99999999999999999999"],
        {},
        ["shards is more than 10000", "one shard per runner"],
    ),
    (
        "a work folder that is a file",
        ["run", "--workdir", "@goodresults", "-k", "model=trap-", "--out", "{tmp}/o.jsonl"],
        {},
        ["--workdir", "cannot use it", "give a folder you can write"],
    ),
    (
        "golden: no such file",
        ["golden", "record", "{tmp}/none.pt", "--out", "{tmp}/g.jsonl"],
        {},
        ["none.pt: no such file or folder"],
    ),
    (
        "golden: a global that runs code",
        ["golden", "record", "{tmp}", "--safe-global", "os.system", "--out", "{tmp}/g.jsonl"],
        {},
        ["--safe-global os.system: that global runs code"],
    ),
    (
        "preload toggle neither 0 nor 1",
        ["run", "--model", "mymodels:build", "--out", "{tmp}/r.jsonl", "--scenarios", "@good"],
        {"CKPT_MATRIX_PRELOAD_MODELS": "no"},
        ["environment variable CKPT_MATRIX_PRELOAD_MODELS='no'", "expected 1", "or 0"],
    ),
]


def _materialise(tmp_path: Path, args: list[str]) -> list[str]:
    bad = {
        "@recipe": GOOD.replace("strip_prefix", "strip"),
        "@layout": GOOD.replace('["dp"]', '["ddx"]'),
        "@format": GOOD.replace('["weights"]', '["pickle"]'),
        "@golden": GOOD.replace("strip_prefix", "golden"),
        "@mode": GOOD + 'visibility = "wide"\n',
        "@good": GOOD,
        "@syntax": GOOD.replace('name = "tiny"', 'name = "tiny'),
    }
    out = []
    for arg in args:
        if arg in bad:
            out.append(scenario(tmp_path, bad[arg]))
        elif arg == "@twice":
            (tmp_path / "two").mkdir()
            scenario(tmp_path / "two", GOOD, "a.toml")
            scenario(tmp_path / "two", GOOD, "b.toml")
            out.append(str(tmp_path / "two"))
        elif arg == "@schema":
            out.append(results_file(tmp_path, {"kind": "environment", "schema_version": 99}))
        elif arg == "@notresults":
            out.append(results_file(tmp_path, "model=trap-save=dp[cpu]"))
        elif arg == "@binary":
            path = tmp_path / "r.jsonl"
            path.write_bytes(b'{"kind": "environment", "schema_version": 1}\n\xff\xfe\n')
            out.append(str(path))
        elif arg == "@badcell":
            cell = json.loads(json.dumps(_CELL))
            cell["observed"] = "loaded"
            out.append(_results(tmp_path, cell))
        elif arg == "@goodresults":
            out.append(_results(tmp_path, _CELL))
        elif arg == "@empty":
            out.append(_empty(tmp_path))
        else:
            out.append(arg.replace("{tmp}", str(tmp_path)))
    return out


_CELL: dict[str, object] = {
    "kind": "cell",
    "id": "model=trap-save=dp[cpu]-load=single[cpu]-fmt=weights-recipe=strip_prefix",
    "cell": {
        "model": "trap",
        "save_layout": "dp",
        "load_layout": "single",
        "format": "weights",
        "recipe": "strip_prefix",
        "save_visibility": [],
        "load_visibility": [],
    },
    "outcome": "PASS",
    "expected": {"error_class": None, "reason": "r", "tensor_device": "cpu"},
    "reason": "equal",
    "observed": {"status": "loaded"},
    "error": None,
    "duration_s": 1.0,
}


def _results(tmp_path: Path, cell: dict[str, object]) -> str:
    path = tmp_path / "r.jsonl"
    environment = {"kind": "environment", "schema_version": 1}
    path.write_text(json.dumps(environment) + "\n" + json.dumps(cell) + "\n")
    return str(path)


def _empty(tmp_path: Path) -> str:
    path = tmp_path / "r.jsonl"
    path.write_text("")
    return str(path)


@pytest.mark.parametrize(("what", "argv", "environ", "said"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_configuration_is_exit_2_with_where_and_what(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    argv: list[str],
    environ: dict[str, str],
    said: list[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    try:
        code = cli.main(_materialise(tmp_path, argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == cli.USAGE_ERROR, what
    err = capsys.readouterr().err
    for text in said:
        assert text in err, (what, err)
    assert "Traceback" not in err, what


def test_contradictory_or_unparsable_cuda_visible_devices() -> None:
    gpus = [Gpu(index=i, name="GPU", uuid=f"GPU-{i}aaa", memory_mib=1) for i in range(2)]
    with pytest.raises(UserError, match=r"'0,x': entry 'x' matches no GPU .*fix the runner's"):
        apply_outer_visibility(gpus, "0,x")
    with pytest.raises(UserError, match=r"'1,GPU-1': GPU 1 listed twice"):
        apply_outer_visibility(gpus, "1,GPU-1")


def test_every_user_error_type_is_one_base_class() -> None:
    from harness.certify.golden import GoldenError
    from harness.core.results import ResultsError
    from harness.core.scenarios import ScenarioError
    from harness.core.shards import ShardError
    from harness.core.zoo import ModelError
    from harness.run.environment import TorchUnavailableError
    from harness.run.inventory import InventoryError
    from harness.run.options import OptionError

    for kind in (
        cli.UsageError,
        ConfigError,
        GoldenError,
        InventoryError,
        ModelError,
        OptionError,
        ResultsError,
        ScenarioError,
        ShardError,
        TorchUnavailableError,
    ):
        assert issubclass(kind, UserError), kind


def test_a_bug_keeps_its_traceback_and_another_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_list", broken)
    assert cli.main(["list"]) == cli.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "KeyError: 'a bug'" in err
    assert "internal error (a bug in ckpt-matrix" in err
