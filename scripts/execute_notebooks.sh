#!/usr/bin/env bash
# Regenerate the notebooks from scripts/make_notebooks.py and execute them in place, storing
# outputs without widget state (nbval compares the checked cells against these outputs).
# Usage: bash scripts/execute_notebooks.sh [notebooks/NAME.ipynb ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
    .venv/bin/python scripts/make_notebooks.py
    .venv/bin/python scripts/make_widget_notebook.py
    set -- notebooks/*.ipynb
fi
for nb in "$@"; do
    echo "== $nb"
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.store_widget_state=False --ExecutePreprocessor.timeout=1800 "$nb"
done
