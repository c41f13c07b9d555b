#!/usr/bin/env bash
# The prepared accelerator check (under 8 minutes on one H100/H200): run it AS IS on a device
# machine, then paste the table it prints (also written to $OUT/device_check.md) into
# docs/benchmarks.md with the date. Extra arguments go to benchmarks/device_check.py
# (--tiny: a seconds-long CPU smoke run of the same code).
#
# Uses the machine's own Python (a GPU image carries jax, flax, optax, numpy); the repository is
# put on PYTHONPATH, so nothing is installed and nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Leave XLA's default memory fraction alone on a GPU; never preallocate on a CPU smoke run.
[[ " $* " == *" --tiny "* ]] && export XLA_PYTHON_CLIENT_PREALLOCATE=false
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || true
exec timeout 470 "$PY" benchmarks/device_check.py --out "$OUT_DIR/device_check.md" "$@"
