"""Write the checkpoint corpus with the torch this runs under.

``python tests/data/corpus/generate.py``

Run it in an environment with an older torch (e.g. ``pip install torch==2.13.0``) and commit the
folder it writes, ``torch-<version>/``: the normal tests load every file with the current torch
and compare each tensor bitwise with the digests recorded here. Only weights and training states,
loaded with ``weights_only=True``: no pickled model objects, since the tests did not write these
files themselves.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from harness.core.axes import Layout
from harness.core.jobspec import RESUME_AT, SAVE_SEED, TRAIN_STEPS
from harness.worker.fingerprint import nested_digests
from harness.worker.models import build, train, wrap
from harness.worker.one_process import configure_torch, save_atomic
from harness.worker.training import DATA_SEED, checkpoint, make_regime, train_steps


def weights(model_name: str, layout: Layout) -> dict[str, Any]:
    model = wrap(build(model_name, seed=SAVE_SEED), layout)
    train(model, model_name, steps=TRAIN_STEPS)
    state: dict[str, Any] = model.state_dict()
    return state


def train_state(training: str) -> dict[str, Any]:
    model = build("trap", seed=SAVE_SEED)
    regime = make_regime(training, model)
    data = torch.Generator().manual_seed(DATA_SEED)
    train_steps(model, regime, data, "trap", RESUME_AT)
    return checkpoint(model, regime, data, namespace_args=False)


def main() -> int:
    configure_torch()
    version = torch.__version__.split("+")[0]
    folder = Path(__file__).parent / f"torch-{version}"
    entries: dict[str, Any] = {}
    states = {
        "trap-single-weights": ("weights", "trap", "single", weights("trap", Layout.SINGLE)),
        "trap_module-dp-weights": (
            "weights",
            "trap_module",
            "dp",
            weights("trap_module", Layout.DP),
        ),
        "trap-single-train_state": ("train_state", "trap", "single", train_state("adam_onecycle")),
    }
    for stem, (kind, model_name, layout, state) in states.items():
        for serialization in ("zip", "legacy"):
            path = folder / f"{stem}-{serialization}.pt"
            save_atomic(state, path, legacy=serialization == "legacy")
            entries[path.name] = {
                "kind": kind,
                "model": model_name,
                "layout": layout,
                "serialization": serialization,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "tensors": nested_digests(state),
            }
    manifest = {"torch": torch.__version__, "files": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(entries)} checkpoints to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
