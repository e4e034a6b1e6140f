"""Importing the harness (anything outside harness.worker) must not import torch or CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = [
    "harness",
    "harness.cli",
    "harness.plugin",
    "harness.session",
    "harness.matrix",
    "harness.oracle",
    "harness.verdict",
    "harness.results",
    "harness.launchers",
    "harness.launchers.spawn",
    "harness.launchers.zygote",
    "harness.launchers.leases",
    "harness.launchers.messages",
    "harness.launchers.shutdown",
    "harness.options",
    "harness.shards",
    "harness.artifacts",
    "harness.environment",
    "harness.summary",
    "harness.classify",
    "harness.golden",
    "harness.files",
    "harness.files.advice",
    "harness.files.dcp_dir",
    "harness.files.pickles",
    "harness.files.safetensors_file",
    "harness.files.torchfile",
]


def test_orchestrator_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "heavy = ('torch', 'torchvision')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
