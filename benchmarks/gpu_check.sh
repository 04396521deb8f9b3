#!/usr/bin/env bash
# The GPU check, prepared for a lent GPU (one H200-class device, 8 minutes), run from the repository
# root after `make env`:
#   bash benchmarks/gpu_check.sh                  # on cuda: prints the table of benchmarks/gpu_check.py
#   bash benchmarks/gpu_check.sh --device cpu     # the dry run on the CPU (small settings, same table)
# Extra arguments go to benchmarks/gpu_check.py (e.g. --skip tests, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
LIMIT="${GPU_CHECK_LIMIT_S:-480}"
args=("$@")
if [[ " ${args[*]:-} " == *" --device cpu "* && " ${args[*]:-} " != *" --quick "* ]]; then
  args+=(--quick)
fi
if [[ " ${args[*]:-} " != *" --device "* ]]; then
  args+=(--device cuda)
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi
exec timeout --signal=INT "$LIMIT" "$PY" benchmarks/gpu_check.py "${args[@]}"
