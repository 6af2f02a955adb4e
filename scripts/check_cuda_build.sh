#!/usr/bin/env bash
# Compiles the CUDA backend without a GPU, so CUDA code cannot rot on CPU-only machines (CI):
# every csrc/cuda/*.cu with nvcc (sm_80 + sm_90), the torch CUDA glue against the installed
# torch's headers, and the C++ CUDA example linked against cuBLAS/cuSOLVER; then the ctests
# (the CUDA example reports "skipped" without a device and runs its checks with one).
# Headers and libraries come from the nvidia-* wheels, installed once into a cache dir.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "check_cuda_build: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }
py="${SVDZIP_VENV:-.venv}/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
wheels="${SVDZIP_CUDA_WHEELS:-$HOME/.cache/svdzip/cuda-wheels}"
if [ ! -f "$wheels/nvidia/cu13/include/cusolverDn.h" ]; then
  echo "check_cuda_build: installing CUDA 13 headers/libraries into $wheels"
  "$py" -m pip install -q --no-deps --target "$wheels" nvidia-cusolver==12.0.4.66 \
    nvidia-cublas==13.1.1.3 nvidia-cuda-runtime==13.0.96 nvidia-cusparse==12.6.3.3 nvidia-nvjitlink
fi
build="${SVDZIP_CUDA_BUILD_DIR:-build/cuda-check}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSVDZIP_BUILD_TORCH=OFF -DSVDZIP_CUDA=ON \
  -DSVDZIP_CUDA_COMPILE_CHECK=ON -DSVDZIP_CUDA_ROOTS="$wheels/nvidia/cu13" -DPython_EXECUTABLE="$py"
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure
echo "check_cuda_build: OK (all CUDA sources compiled and linked)"
