#!/usr/bin/env bash
# Runs the matrix on the GPUs of this machine and keeps the evidence: the machine's own account of
# its GPUs, the harness's inventory, the results file and its reports, and the GPU-only tests.
#
#   docs/evidence/run-gpu.sh OUT_DIR [extra `ckpt-matrix run` options]
#
# Runs from a source checkout without installing it (PYTHONPATH), with the interpreter in $PYTHON
# (default python3), which must already hold torch, filelock, rich, xxhash and numpy. Environment knobs:
# JOBS (cells at a time, default: the CPU count), GPU_SLOTS (worker processes per GPU at once,
# default 8), MATRIX_TIME_LIMIT (seconds for each matrix run before it is stopped, default 0 =
# none; what finished is kept and `--resume` continues it), SPAWN_TOO (default 1: run the matrix
# again under --launcher spawn and diff the two).
set -uo pipefail
out=${1:?usage: docs/evidence/run-gpu.sh OUT_DIR [ckpt-matrix run options]}
shift
cd "$(dirname "$0")/../.."
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
jobs=${JOBS:-$(nproc)}
slots=${GPU_SLOTS:-8}
limit=${MATRIX_TIME_LIMIT:-0}

{
  date -u +"started %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=index,uuid,name,memory.total,mig.mode.current,driver_version \
    --format=csv,noheader,nounits || echo "nvidia-smi failed"
  "$python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
} 2>&1 | tee "$out/machine.txt"

"$python" -m harness.cli inventory 2>&1 | tee "$out/inventory.txt"
"$python" -m harness.cli inventory --json >"$out/inventory.json" 2>&1
"$python" -m harness.cli list --count 2>&1 | tee "$out/count.txt"

start=$(date +%s)
timeout --signal=INT --kill-after=30 "$limit" \
  "$python" -m harness.cli run --out "$out/results.jsonl" --overwrite --jobs "$jobs" \
  --gpu-slots "$slots" --workdir "${WORKDIR:-/tmp/ckpt-matrix-work}" "$@" 2>&1 |
  tee "$out/run.log"
status=${PIPESTATUS[0]}
echo "matrix: exit $status after $(($(date +%s) - start)) s" | tee -a "$out/run.log"

# The same matrix under the other launcher (SPAWN_TOO=1, the default): the zygote is the default
# launcher, and the two results files must certify against each other (exit 0).
if [ "${SPAWN_TOO:-1}" = 1 ]; then
  start=$(date +%s)
  timeout --signal=INT --kill-after=30 "$limit" \
    "$python" -m harness.cli run --out "$out/results-spawn.jsonl" --overwrite --jobs "$jobs" \
    --gpu-slots "$slots" --launcher spawn --workdir "${WORKDIR:-/tmp/ckpt-matrix-work}-spawn" \
    "$@" 2>&1 | tail -3 | tee "$out/run-spawn.log"
  echo "matrix (spawn): exit ${PIPESTATUS[0]} after $(($(date +%s) - start)) s" |
    tee -a "$out/run-spawn.log"
  "$python" -m harness.cli diff "$out/results-spawn.jsonl" "$out/results.jsonl" \
    --markdown "$out/diff-launchers.md" >/dev/null 2>&1
  echo "diff spawn -> zygote: exit $?" | tee -a "$out/run-spawn.log"
fi

"$python" -m harness.cli report "$out/results.jsonl" --markdown "$out/results.md" \
  --html "$out/results.html" 2>&1 | tail -1

# The tests that need a GPU (tests/conformance/test_gpu.py), through the plugin (named here
# when the package is not installed, so its entry point is missing).
plugin=()
"$python" -c 'import importlib.metadata as m; m.distribution("ckpt-matrix")' 2>/dev/null ||
  plugin=(-p harness.plugin)
"$python" -m pytest "${plugin[@]}" -p no:cacheprovider -q tests/conformance/test_gpu.py \
  2>&1 | tee "$out/test_gpu.log" | tail -5
exit "$status"
