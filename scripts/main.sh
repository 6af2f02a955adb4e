#!/usr/bin/env bash
# README's main command: set up (idempotent), then compress SmolLM2-135M with the best recipe
# (svdzip.config.RECIPES["best"]: nsvd with an ASVD-weighted stage 2, sequential, compensated
# objective, loss allocation)
# keeping 80% of the decoder-block parameters, and print dense vs compressed perplexity (wiki and ptb,
# the fixed protocol), the time taken and where the result was saved.
#   OUT=dir scripts/main.sh    to choose the output directory (default out/smollm2-best-0.8, which a
#                              rerun replaces; an OUT you choose must be new or empty)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${SVDZIP_VENV:-.venv}/bin/python"
"$PY" -m svdzip env
REPLACE=()
if [ -z "${OUT:-}" ]; then OUT=out/smollm2-best-0.8; REPLACE=(--overwrite); fi
exec "$PY" -m svdzip compress smollm2-135m "$OUT" --recipe best --ratio 0.8 --eval wiki,ptb \
  --json "$OUT.json" "${REPLACE[@]}"
