"""Loads the compiled op library once, and says why not instead of crashing.

`import svdzip` must work on a machine where the extension was never built, failed to
build, or was built against another torch: then every op runs its pure-torch reference
and `svdzip env` explains what happened. Set SVDZIP_DISABLE_NATIVE=1 to force that path.
"""

from __future__ import annotations

import os
import warnings

import torch

_module = None
_reason: str | None = None
_loaded = False
_kernels: dict[tuple[str, str], bool] = {}  # (op, device type) -> native kernel registered


def _load() -> None:
    global _module, _reason, _loaded
    _loaded = True
    if os.environ.get("SVDZIP_DISABLE_NATIVE", "") not in ("", "0"):
        _reason = "disabled by SVDZIP_DISABLE_NATIVE"
        return
    try:
        from . import _C  # runs the TORCH_LIBRARY registrations
    except (ImportError, OSError) as exc:
        _reason = f"native library could not be loaded ({type(exc).__name__}: {exc})"
        return
    built = str(_C.build_info()["torch_version"]).split("+")[0]
    running = torch.__version__.split("+")[0]
    if built != running:
        _reason = (f"native library was built against torch {built} but torch {running} is "
                   "running; rebuild with scripts/setup.sh")
        return
    _module = _C
    # Queried once here: a dict lookup later is cheap and traceable by torch.compile.
    for op in torch._C._dispatch_get_all_op_names():
        if op.startswith("svdzip::"):
            for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
                _kernels[(op[len("svdzip::"):], dev)] = \
                    torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def native():
    """The loaded extension module, or None (then `reason()` says why)."""
    if not _loaded:
        _load()
        if _module is None:
            warnings.warn(f"svdzip: using pure-torch reference ops: {_reason}", RuntimeWarning,
                          stacklevel=3)
    return _module


def reason() -> str | None:
    native()
    return _reason


def has_kernel(op: str, device: torch.device) -> bool:
    """Whether torch.ops.svdzip.<op> has a native kernel for this device type."""
    return _kernels.get((op, device.type), False)
