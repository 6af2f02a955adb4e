#!/usr/bin/env bash
# README's main command: set up (idempotent), show the environment, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${SVDZIP_VENV:-.venv}/bin/python"
"$PY" -m svdzip env
"$PY" -m svdzip demo
