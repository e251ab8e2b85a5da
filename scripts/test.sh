#!/usr/bin/env bash
# Set up (with test tools) and run every test: unit tests on tiny models, integration tests
# on the default packaged model, and the notebooks under nbval. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q --nbval-lax --nbval-current-env \
    --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 \
    tests notebooks "$@"
