"""The packages of ``harness`` import only the layers below them (docs/ARCHITECTURE.md, "Packages").

Every import in every module is read with ``ast`` (at any depth: an import inside a function is an
import too) and mapped to the package it lands in; each package may import only the ones its
``__init__`` docstring names. A front door (``cli``, ``plugin``) may import anything; nothing
imports a front door.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import harness

ROOT = Path(harness.__file__).parent
FRONT_DOORS = {"cli", "plugin"}
# package -> the packages its modules may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "inspect": {"core", "inspect"},
    "launchers": {"core", "launchers"},
    "worker": {"core", "inspect", "worker"},
    "run": {"core", "launchers", "run"},
    "certify": {"core", "inspect", "launchers", "run", "certify"},
}


def package_of(module: str) -> str | None:
    """``harness.core.cell`` -> ``core``; ``harness.cli`` -> ``cli``; outside harness -> None."""
    parts = module.split(".")
    if parts[0] != "harness":
        return None
    return parts[1] if len(parts) > 1 else "harness"


def imports(path: Path) -> list[tuple[int, str]]:
    """Every harness module that ``path`` imports, with its line."""
    module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return imports_in(path.read_text(encoding="utf-8"), module, package=path.name == "__init__.py")


def imports_in(text: str, module: str, *, package: bool = False) -> list[tuple[int, str]]:
    """The harness modules that the source of ``module`` imports, at any depth, with their lines."""
    here = module if package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
            target = (
                node.module or ""
                if not node.level
                else ".".join(part for part in (base, node.module) if part)
            )
            found.append((node.lineno, target))
            # `from harness import cli` imports harness.cli
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "harness"]


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_package_is_placed_in_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)
    loose = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert loose == FRONT_DOORS, (
        "a module at the top of harness/ is a front door or belongs in a package"
    )


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    own = package_of(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
    wrong = []
    for line, name in imports(path):
        target = package_of(name)
        if target in (None, "harness"):
            continue
        if target in FRONT_DOORS and own not in FRONT_DOORS:
            wrong.append(f"{path.name}:{line} imports the front door {name}")
        elif own in ALLOWED and target not in ALLOWED[own] and target not in FRONT_DOORS:
            wrong.append(f"{path.name}:{line} ({own}) imports {name} ({target})")
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_says_what_it_holds_and_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8")))
    assert doc, f"harness/{package}/__init__.py has no docstring"
    below = sorted(ALLOWED[package] - {package})
    assert "May import:" in doc, f"harness/{package}/__init__.py does not say what it may import"
    said = doc.split("May import:", 1)[1]
    named = set(re.findall(r"``(\w+)``", said)) & set(ALLOWED)
    assert named == set(below), f"{package}: its docstring names {sorted(named)}, the rule {below}"


def test_the_reader_finds_imports_at_any_depth_and_relative_ones() -> None:
    source = (
        "import harness.core.cell\n"
        "def f():\n"
        "    from harness.run.options import RunOptions\n"
        "from ..run import planning\n"
        "from . import oracle\n"
    )
    found = {name for _, name in imports_in(source, "harness.core.verdict")}
    assert {"harness.core.cell", "harness.run.options", "harness.run.planning"} <= found
    assert "harness.core.oracle" in found
