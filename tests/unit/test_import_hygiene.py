"""Importing the harness (anything outside harness.worker) must not import torch or CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import harness

ROOT = Path(harness.__file__).parent
# every module of the orchestrator: all of harness but the worker package (which runs in workers)
MODULES = sorted(
    ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in ROOT.rglob("*.py")
    if "worker" not in path.relative_to(ROOT).parts
)


def test_orchestrator_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "heavy = ('torch', 'torchvision')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
