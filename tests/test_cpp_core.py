"""Builds the torch-free core on its own (as a C++ stack would) and runs its ctests:
the example against the in-tree target, and against the installed CMake package."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_core_builds_without_torch_and_ctest_passes(tmp_path):
    def run(*cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    run("cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DSVDZIP_BUILD_TORCH=OFF",
        "-DSVDZIP_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release")
    run("cmake", "--build", str(tmp_path), "-j2")
    out = run("ctest", "--test-dir", str(tmp_path), "--output-on-failure")
    assert "100% tests passed" in out and "cpp_installed_package" in out
