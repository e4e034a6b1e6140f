"""``ckpt-matrix golden record`` on resnet152's weights: wall time, and the worker's memory
against the file's size.

Writes resnet152's state_dict (torchvision, randomly initialised and seeded: the digests do not
care whose weights they are) as a torch.save zip and as safetensors, records each file alone
with the zygote launcher (and a one-tensor file: the fixed cost of a run, its environment job
and its workers), then verifies the recording, and prints each step's wall time, the
worker's resident memory before the load and at its peak, and the load's growth as a fraction of
the file's size (the goal: well below 2).

    python benchmarks/golden_record.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_weights(folder: Path) -> list[Path]:
    code = (
        "import torch, torchvision, sys\n"
        "from safetensors.torch import save_file\n"
        "torch.manual_seed(0)\n"
        "sd = torchvision.models.resnet152().state_dict()\n"
        "torch.save(sd, sys.argv[1] + '/resnet152.pt')\n"
        "save_file(sd, sys.argv[1] + '/resnet152.safetensors')\n"
        "torch.save({'w': torch.ones(1)}, sys.argv[1] + '/tiny.pt')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return [folder / "tiny.pt", folder / "resnet152.pt", folder / "resnet152.safetensors"]


def ckpt_matrix(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"ckpt-matrix {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="golden-bench-") as tmp:
        folder = Path(tmp)
        files = write_weights(folder)
        for path in files:
            out = folder / f"{path.name}.jsonl"
            walls = [
                ckpt_matrix("golden", "record", str(path), "--out", str(out), "--overwrite")
                for _ in range(args.repeat)
            ]
            verify = folder / f"{path.name}.verify.jsonl"
            verify_wall = ckpt_matrix(
                "golden", "verify", str(out), "--out", str(verify), "--overwrite"
            )
            line = json.loads(out.read_text().splitlines()[1])
            observed = line["observed"]
            memory = observed["memory"]
            size_mb = observed["bytes"] / 2**20
            growth = memory["peak_rss_mb"] - memory["rss_before_mb"]
            ratio = f"{growth / size_mb:.2f}x the file" if size_mb >= 1 else "a file of no size"
            print(
                f"{path.name}: {size_mb:.1f} MiB, {len(observed['tensors'])} tensors; "
                f"record {statistics.median(walls):.2f} s (median of {len(walls)}: "
                f"{', '.join(f'{w:.2f}' for w in walls)}; the worker's load and digests "
                f"{observed['work_s']:.2f} s), verify {verify_wall:.2f} s; "
                f"worker RSS {memory['rss_before_mb']:.0f} MiB before the load, peak "
                f"{memory['peak_rss_mb']:.0f} MiB: the load grew it by {growth:.0f} MiB = {ratio}"
            )


if __name__ == "__main__":
    main()
