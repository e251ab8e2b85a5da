#!/usr/bin/env bash
# The documentation site (mkdocs.yml, sources in docs/): `build` writes site/ with --strict
# (a broken link, API reference or render marker fails), `serve` serves it on
# http://127.0.0.1:8000 while you edit. Needs the `docs` extra (scripts/setup.sh --test has it).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-build}" in
    build) NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs build --strict --quiet ;;
    serve) NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs serve --dev-addr 127.0.0.1:8000 ;;
    *) echo "usage: scripts/docs.sh [build|serve]" >&2; exit 2 ;;
esac
