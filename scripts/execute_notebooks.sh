#!/usr/bin/env bash
# Regenerate the notebooks from scripts/make_notebooks.py and execute them in place, storing
# outputs without widget state (nbval compares the checked cells against these outputs).
# Usage: bash scripts/execute_notebooks.sh [notebooks/NAME.ipynb ...] (default: all; a named
# claim notebook is regenerated from scripts/make_notebooks.py first)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
    .venv/bin/python scripts/make_notebooks.py
    .venv/bin/python scripts/make_widget_notebook.py
    set -- notebooks/*.ipynb
else
    claims=()
    for nb in "$@"; do
        name=$(basename "$nb" .ipynb)
        if [ "$name" = widgets ]; then
            .venv/bin/python scripts/make_widget_notebook.py
        else
            claims+=("$name")
        fi
    done
    [ ${#claims[@]} -eq 0 ] || .venv/bin/python scripts/make_notebooks.py "${claims[@]}"
fi
for nb in "$@"; do
    echo "== $nb"
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.store_widget_state=False --ExecutePreprocessor.timeout=1800 "$nb"
done
