#!/usr/bin/env bash
# The peer quantizer's own environment: llm-compressor 0.14 pins transformers <= 5.17 and
# compressed-tensors 0.19, so it lives beside svdzip's, never in it. torch stays the CPU
# 2.13.0 build (a constraint, or pip would pull a CUDA build of several GB).
#   bash bench/gptq_setup.sh            -> bench/.venv-llmc
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llmc"
[ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llmcompressor" 2>/dev/null && { echo "$venv ready"; exit 0; }
python3.11 -m venv "$venv"
echo "torch==2.13.0" > "$venv/constraints.txt"
"$venv/bin/pip" install -q -c "$venv/constraints.txt" "torch==2.13.0" "llmcompressor==0.14.*"
"$venv/bin/python" -c "import llmcompressor, torch, transformers; print('llmcompressor', llmcompressor.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
