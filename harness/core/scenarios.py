"""Scenario files: declarative axes in TOML, validated with the file and key named on error.

The library never imports the repository's ``scenarios/`` folder; the front doors (CLI, plugin)
find the files and hand them here. ``default_scenarios_dir`` locates the default set, inside the
installed wheel or in a source checkout.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from harness.core.axes import Format, Layout, Wrapper, parse_enum
from harness.core.devices import DEFAULT_DEVICE, check_device, check_map_location
from harness.core.errors import UserError
from harness.core.recipes import GOLDEN, TRAININGS, recipe
from harness.core.visibility import MODES
from harness.core.zoo import model_spec

_HEADER = re.compile(r"^\s*\[\[\s*scenario\s*\]\]")
_LIST_KEYS = ("models", "save_layouts", "load_layouts", "formats", "recipes")
_OPTIONAL_LISTS = {
    "save_devices": [DEFAULT_DEVICE],
    "map_locations": ["none"],
    "trainings": [""],
    "serializations": ["zip"],
    "save_wrappers": ["none"],
    "load_wrappers": ["none"],
}
SERIALIZATIONS = ("zip", "legacy")
_WORLD_KEYS = ("save_world_sizes", "load_world_sizes")
MAX_WORLD = 64
_ALLOWED_KEYS = frozenset(
    {"name", "description", "visibility", *_LIST_KEYS, *_OPTIONAL_LISTS, *_WORLD_KEYS}
)


class ScenarioError(UserError):
    """A scenario file could not be read; the message names the file and the key."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str
    source: str  # "path/to/file.toml:scenario[i]"
    models: tuple[str, ...]
    save_layouts: tuple[Layout, ...]
    load_layouts: tuple[Layout, ...]
    formats: tuple[Format, ...]
    recipes: tuple[str, ...]
    save_devices: tuple[str, ...] = (DEFAULT_DEVICE,)
    map_locations: tuple[str, ...] = ("none",)
    visibility: str = "same"  # cpu | same | cross (see harness.core.visibility.pairs_for_mode)
    trainings: tuple[str, ...] = ("",)  # regimes for train_state recipes
    serializations: tuple[str, ...] = ("zip",)
    save_world_sizes: tuple[int, ...] = (1,)  # ranks of distributed save layouts
    load_world_sizes: tuple[int, ...] = (1,)
    save_wrappers: tuple[Wrapper, ...] = (Wrapper.NONE,)  # inside the save layout
    load_wrappers: tuple[Wrapper, ...] = (Wrapper.NONE,)


def default_scenarios_dir() -> Path:
    """The default scenarios: packaged in the wheel, else the source checkout's ``scenarios/``."""
    packaged = resources.files("harness") / "_scenarios"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "scenarios"
    if checkout.is_dir():
        return checkout
    raise ScenarioError(
        "no default scenarios found (neither harness/_scenarios nor the checkout's scenarios/); "
        "pass --scenarios PATH"
    )


def scenario_files(path: Path) -> list[Path]:
    """A file, or every ``*.toml`` in a folder in name order."""
    if path.is_dir():
        files = sorted(path.glob("*.toml"))
        if not files:
            raise ScenarioError(f"{path}: the folder holds no *.toml scenario files")
        return files
    if path.is_file():
        return [path]
    raise ScenarioError(f"{path}: no such scenario file or folder")


def load_scenarios(path: Path) -> list[Scenario]:
    """Every scenario of a file or folder; two of one name (in any of the files) are refused."""
    scenarios = [scenario for file in scenario_files(path) for scenario in load_file(file)]
    seen: dict[str, Scenario] = {}
    for scenario in scenarios:
        if scenario.name in seen:
            raise ScenarioError(
                f"{scenario.source}: the scenario name {scenario.name!r} is taken already, by "
                f"{seen[scenario.name].source}; give each scenario its own name"
            )
        seen[scenario.name] = scenario
    return scenarios


def load_file(path: Path) -> list[Scenario]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends "(at line L, column C)"
        raise ScenarioError(f"{path}: not valid TOML: {exc}; fix the file there") from None
    extra = set(data) - {"scenario"}
    if extra:
        raise ScenarioError(f"{path}: unknown top-level key(s) {sorted(extra)}; use [[scenario]]")
    tables = data.get("scenario")
    if not isinstance(tables, list) or not tables:
        raise ScenarioError(f"{path}: no [[scenario]] tables")
    # each table's header line, so an error points into the file
    headers = [n for n, line in enumerate(text.splitlines(), 1) if _HEADER.match(line)]
    return [
        _scenario(
            table,
            f"{path}:{headers[index]}:scenario[{index}]"
            if index < len(headers)
            else f"{path}:scenario[{index}]",
        )
        for index, table in enumerate(tables)
    ]


def _scenario(table: dict[str, Any], where: str) -> Scenario:
    unknown = set(table) - _ALLOWED_KEYS
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_KEYS)}"
        )
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{where}.name: a non-empty string is required")
    where = f"{where} ({name})"
    lists = {key: _strings(table, key, where) for key in _LIST_KEYS}
    for key, default in _OPTIONAL_LISTS.items():
        lists[key] = _strings(table, key, where) if key in table else tuple(default)
    visibility = table.get("visibility", "same")
    if visibility not in MODES:
        raise ScenarioError(
            f"{where}.visibility: {visibility!r} is not one of {', '.join(map(repr, MODES))}"
        )
    try:
        for device in lists["save_devices"]:
            check_device(device, f"{where}.save_devices")
        for mapping in lists["map_locations"]:
            check_map_location(mapping, f"{where}.map_locations")
        for serialization in lists["serializations"]:
            if serialization not in SERIALIZATIONS:
                raise ScenarioError(
                    f"{where}.serializations: unknown serialization {serialization!r}; "
                    "expected 'zip' or 'legacy'"
                )
        for training in lists["trainings"]:
            if training and training not in TRAININGS:
                known = ", ".join(TRAININGS)
                raise ScenarioError(
                    f"{where}.trainings: unknown training {training!r}; expected {known}"
                )
        for model in lists["models"]:
            model_spec(model, f"{where}.models")
        for name_ in lists["recipes"]:
            recipe(name_, f"{where}.recipes")
            if name_ == GOLDEN:
                raise ScenarioError(
                    f"{where}.recipes: recipe {GOLDEN!r} certifies your own files, not a "
                    "scenario's; run `ckpt-matrix golden record PATH...` instead"
                )
        save = tuple(parse_enum(Layout, v, f"{where}.save_layouts") for v in lists["save_layouts"])
        load = tuple(parse_enum(Layout, v, f"{where}.load_layouts") for v in lists["load_layouts"])
        formats = tuple(parse_enum(Format, v, f"{where}.formats") for v in lists["formats"])
        wrappers = {
            key: tuple(parse_enum(Wrapper, v, f"{where}.{key}") for v in lists[key])
            for key in ("save_wrappers", "load_wrappers")
        }
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    worlds = {key: _world_sizes(table, key, where) for key in _WORLD_KEYS}
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{where}.description: must be a string")
    return Scenario(
        name=name,
        description=description,
        source=where,
        models=lists["models"],
        save_layouts=save,
        load_layouts=load,
        formats=formats,
        recipes=lists["recipes"],
        save_devices=lists["save_devices"],
        map_locations=lists["map_locations"],
        trainings=lists["trainings"],
        serializations=lists["serializations"],
        visibility=visibility,
        save_world_sizes=worlds["save_world_sizes"],
        load_world_sizes=worlds["load_world_sizes"],
        save_wrappers=wrappers["save_wrappers"],
        load_wrappers=wrappers["load_wrappers"],
    )


def _world_sizes(table: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    """Ranks for distributed layouts: a non-empty list of distinct integers 1..MAX_WORLD."""
    value = table.get(key, [1])
    ok = isinstance(value, list) and value and len(set(value)) == len(value)
    if not ok or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WORLD for v in value
    ):
        raise ScenarioError(
            f"{where}.{key}: expected a non-empty list of distinct whole numbers of ranks "
            f"(1 to {MAX_WORLD}), got {value!r}"
        )
    return tuple(value)


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key)
    if value is None:
        raise ScenarioError(f"{where}: missing key {key!r} (a list of strings)")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{where}.{key}: expected a non-empty list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ScenarioError(f"{where}.{key}: duplicate entries in {value!r}")
    return tuple(value)
