#!/usr/bin/env bash
# Claim 6's tiers and decode speed on random weights of real shapes (Gemma 3-4B,
# Llama-3.2-1B), each beside the roofline's prediction: on CUDA when torch sees a GPU (the
# full plan, bf16: a few minutes on one H100), else on the CPU with smaller shapes.
# Needs no packaged weights and no network. Results (CSV, JSON, provenance) go to --out,
# default results/gpu_check, which notebook 06 reads. Extra args go to the module, e.g.
#   bash scripts/gpu_check.sh --tiny --out /tmp/gpu_check     (a CPU smoke run, seconds)
# PYTHON picks the interpreter (default .venv/bin/python): set it to one whose torch has
# CUDA where the venv's torch is the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c 'import torch
print("torch", torch.__version__, "| CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none, the CPU plan runs")'
exec "$PY" -m kvdirect_interp.gpu_check --out results/gpu_check "$@"
