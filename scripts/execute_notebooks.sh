#!/usr/bin/env bash
# Sync each notebook pair (notebooks/NAME.py, the jupytext source, and notebooks/NAME.ipynb:
# the more recently edited side wins, see notebooks/jupytext.toml), then execute the named
# notebooks in place, storing outputs without widget state (nbval compares the checked cells
# against these outputs).
# Usage: bash scripts/execute_notebooks.sh [notebooks/NAME.ipynb|notebooks/NAME.py ...]
# (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- notebooks/*.ipynb
notebooks=()
for nb in "$@"; do
    nb="${nb%.py}"
    nb="${nb%.ipynb}.ipynb"
    [ -f "$nb" ] || [ -f "${nb%.ipynb}.py" ] || { echo "no such notebook: $nb" >&2; exit 2; }
    notebooks+=("$nb")
done
for nb in "${notebooks[@]}"; do
    if [ -f "$nb" ]; then
        .venv/bin/jupytext --sync "$nb"
    else  # a new notebook, written as a .py only: create its .ipynb
        .venv/bin/jupytext --set-formats ipynb,py:percent --set-kernel python3 "${nb%.ipynb}.py"
    fi
done
for nb in "${notebooks[@]}"; do
    echo "== $nb"
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.store_widget_state=False --ExecutePreprocessor.timeout=1800 "$nb"
done
# executing rewrote the .ipynb (outputs only): sync again so the pair's timestamps agree
.venv/bin/jupytext --sync "${notebooks[@]}"
