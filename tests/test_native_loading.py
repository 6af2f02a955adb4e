import json
import os
import subprocess
import sys

import svdzip


def _run(code, **env):
    e = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


def test_native_library_is_built_and_loaded():
    assert svdzip.native_available(), svdzip._native.reason()


def test_import_falls_back_when_library_is_missing():
    code = ("import sys, warnings; sys.modules['svdzip._C'] = None\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); import svdzip; ok = svdzip.native_available()\n"
            "import torch; from svdzip import ops\n"
            "U, S, Vh = ops.batched_svd(torch.eye(3), 2)\n"
            "print(ok, S.tolist(), [str(x.message) for x in w])")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False [1.0, 1.0]")
    assert "using pure-torch reference ops: native library could not be loaded" in r.stdout


def test_env_command_reports_disabled_native():
    r = _run("from svdzip.cli import main; main(['env', '--json'])", SVDZIP_DISABLE_NATIVE="1")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["native_loaded"] is False
    assert rep["native_problem"] == "disabled by SVDZIP_DISABLE_NATIVE"
    assert all(e < 1e-8 for e in rep["self_check_max_error"].values())


def test_env_command_with_native():
    r = _run("from svdzip.cli import main; raise SystemExit(main(['env']))")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "native library: loaded" in r.stdout and "FAILED" not in r.stdout


def test_extension_is_built_with_openmp(native):
    # at::parallel_for is a header template: in a library compiled without OpenMP it runs
    # serially, and the CPU Gram's row slabs and batched SVDs lose their threads silently.
    from svdzip import _C

    info = _C.build_info()
    assert info["openmp"] is True, info
