from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.axes import Layout
from harness.core.scenarios import ScenarioError, default_scenarios_dir, load_file, load_scenarios

GOOD = """
[[scenario]]
name = "mine"
models = ["trap"]
save_layouts = ["single", "dp"]
load_layouts = ["single"]
formats = ["weights"]
recipes = ["as_saved"]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_a_scenario(tmp_path: Path) -> None:
    (scenario,) = load_file(write(tmp_path, GOOD))
    assert scenario.name == "mine"
    assert scenario.save_layouts == (Layout.SINGLE, Layout.DP)
    assert scenario.source.endswith("s.toml:2:scenario[0] (mine)")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('"trap"', '"vgg"'), r"s\.toml:2:scenario\[0\] \(mine\)\.models: unknown model 'vgg'"),
        (('"as_saved"', '"strip"'), r"\(mine\)\.recipes: unknown recipe 'strip'"),
        (
            ('load_layouts = ["single"]', 'load_layouts = ["megatron"]'),
            r"\(mine\)\.load_layouts: unknown layout 'megatron'",
        ),
        (
            ('formats = ["weights"]', 'formats = "weights"'),
            r"\(mine\)\.formats: expected a non-empty list",
        ),
        (('formats = ["weights"]', "formats = []"), r"\.formats: expected a non-empty list"),
        (('formats = ["weights"]', 'format = ["weights"]'), r"unknown key\(s\) \['format'\]"),
        (('formats = ["weights"]\n', ""), r"\(mine\): missing key 'formats'"),
        (('"single", "dp"', '"dp", "dp"'), r"\.save_layouts: duplicate entries"),
        (('name = "mine"', 'name = ""'), r"scenario\[0\]\.name: a non-empty string is required"),
        (
            ('recipes = ["as_saved"]', 'recipes = ["as_saved"]\nsave_wrappers = ["jit"]'),
            r"\(mine\)\.save_wrappers: unknown wrapper 'jit'; expected one of 'none', 'compile'",
        ),
    ],
)
def test_bad_input_names_file_scenario_and_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    assert edit[0] in GOOD
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ScenarioError, match=message):
        load_file(path)


def test_not_toml_and_no_tables(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"s\.toml: not valid TOML"):
        load_file(write(tmp_path, "[[scenario]\n"))
    with pytest.raises(ScenarioError, match=r"t\.toml: no \[\[scenario\]\] tables"):
        load_file(write(tmp_path, "", "t.toml"))
    with pytest.raises(ScenarioError, match=r"u\.toml: unknown top-level key\(s\) \['scenarios'\]"):
        load_file(write(tmp_path, "[[scenarios]]\nname='x'\n", "u.toml"))


def test_folder_and_missing_paths(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "b.toml")
    write(tmp_path, GOOD.replace("mine", "first"), "a.toml")
    assert [s.name for s in load_scenarios(tmp_path)] == ["first", "mine"]
    with pytest.raises(ScenarioError, match="no such scenario file or folder"):
        load_scenarios(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match=r"empty: the folder holds no \*\.toml"):
        load_scenarios(empty)


def test_default_scenarios_load() -> None:
    names = {s.name for s in load_scenarios(default_scenarios_dir())}
    assert {"prefix-recipes", "known-bad-recipes"} <= names


@pytest.mark.parametrize(
    ("value", "shown"),
    [("[0]", "[0]"), ("[2, 2]", "[2, 2]"), ('["2"]', "['2']"), ("[true]", "[True]"), ("[]", "[]")],
)
def test_world_sizes_must_be_distinct_whole_numbers(tmp_path: Path, value: str, shown: str) -> None:
    path = write(tmp_path, GOOD + f"save_world_sizes = {value}\n")
    with pytest.raises(ScenarioError, match=r"scenario\[0\] \(mine\)\.save_world_sizes") as e:
        load_file(path)
    assert f"got {shown}" in str(e.value)


def test_world_sizes_are_read(tmp_path: Path) -> None:
    [scenario] = load_file(write(tmp_path, GOOD + "load_world_sizes = [1, 3]\n"))
    assert scenario.load_world_sizes == (1, 3)
    assert scenario.save_world_sizes == (1,)
