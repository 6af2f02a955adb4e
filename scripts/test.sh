#!/usr/bin/env bash
# README's test command: set up (idempotent), then run the default test suite.
#   scripts/test.sh            default suite (everything not marked slow)
#   scripts/test.sh --slow     only the slow end-to-end tests (installs gemma3-270m, qwen2.5-0.5b)
#   extra arguments go to pytest, e.g. scripts/test.sh -k gram
set -euo pipefail
cd "$(dirname "$0")/.."
marker="not slow"
if [ "${1:-}" = "--slow" ]; then
  marker="slow"; shift
  bash scripts/setup.sh --models all   # the slow tests compress Gemma-3 and Qwen2.5 too
else
  bash scripts/setup.sh
fi
# --durations: the slowest tests in every CI log, for keeping the default run under its 25 minutes
exec "${SVDZIP_VENV:-.venv}/bin/python" -m pytest -m "$marker" --durations=15 "$@"
