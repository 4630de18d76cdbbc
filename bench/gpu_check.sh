#!/usr/bin/env bash
# The learner's checks on a GPU machine with torch, transformers, accelerate and deepspeed (no vLLM, no Ray):
# bench/gpu_check.py, one PASS/FAIL line per check, exit status 1 on a failure. Minutes on one GPU.
#
#   bench/gpu_check.sh                       # the installed packages
#   bench/gpu_check.sh --wheels DIR          # first pip install them from a folder of wheels (no network)
#   bench/gpu_check.sh --device cpu          # any other option goes to gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "${wheels:-}" ]; then
  [ -d "$wheels" ] || { echo "--wheels: $wheels is not a folder" >&2; exit 2; }
  "$PYTHON" -m pip install --no-index --find-links "$wheels" transformers deepspeed accelerate safetensors
  # flash-attn only if its wheel is there: the learner falls back to sdpa without it
  if ls "$wheels"/flash_attn-*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install --no-index --find-links "$wheels" --no-deps flash-attn || echo "flash-attn did not install"
  fi
fi
exec timeout 600 "$PYTHON" bench/gpu_check.py "${args[@]}"
