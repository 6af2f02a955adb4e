#!/usr/bin/env bash
# README's test command: set up (idempotent), then run the default test suite.
#   scripts/test.sh            default suite (everything not marked slow)
#   scripts/test.sh --slow     only the slow end-to-end tests
#   extra arguments go to pytest, e.g. scripts/test.sh -k gram
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
marker="not slow"
if [ "${1:-}" = "--slow" ]; then marker="slow"; shift; fi
exec "${SVDZIP_VENV:-.venv}/bin/python" -m pytest -m "$marker" "$@"
