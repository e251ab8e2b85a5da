#!/usr/bin/env bash
# Set up (with test tools) and run every test: unit tests on tiny models, integration tests
# on the default packaged model, the notebooks under nbval, and the widgets in JupyterLab
# in headless Chromium (Debian's package, installed here if missing), and the documentation
# site built with --strict. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if [ ! -x /usr/bin/chromium ]; then
    echo "installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# lint and format check (package, tests, benchmarks, notebook sources; pyproject's [tool.ruff])
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# the import layers pyproject.toml's [tool.importlinter] states (no module imports upward)
.venv/bin/lint-imports --no-cache
# CI converts the default model into a cache of its own clone, so which real-model tests run
# there depends on the packages installed, never on what earlier runs left in ~/.cache
if [ "${CI:-}" = "true" ] && [ -z "${KVDIRECT_CACHE:-}" ]; then
    export KVDIRECT_CACHE="$PWD/.cache/kvdirect_interp"
fi
# the documentation site, built strictly: a broken link, reference or stored table fails
bash scripts/docs.sh build
export PYDEVD_DISABLE_FILE_VALIDATION=1  # keeps a debugpy warning off kernels' stderr
# --durations: the slowest tests are printed, so a slow machine shows where the time goes;
# -rs: every skip with its reason, so a change in the skip count can be traced
exec .venv/bin/python -m pytest -q -rs --durations=25 --nbval-lax --nbval-current-env \
    --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 1200 \
    tests notebooks "$@"
