"""`svdzip env`: what is installed, how the native library was built, and a self-check."""

from __future__ import annotations

import platform

import torch

from . import _native, _reference, ops
from .version import __version__

OPS = ("gram_accumulate_", "abs_mean_accumulate_", "abs_max_accumulate_", "batched_svd",
       "whitening_factor", "lowrank_linear")


def _kernels() -> dict[str, dict[str, bool]]:
    return {op: {dev: _native.has_kernel(op, torch.device(dev)) for dev in ("cpu", "cuda")}
            for op in OPS}


def self_check(device: str = "cpu") -> dict[str, float]:
    """Max abs difference of each op (as `ops` dispatches it) against the reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64).to(device)
    W = torch.randn(10, 12, generator=g, dtype=torch.float64).to(device)
    acc, ref = torch.zeros(12, 12, dtype=torch.float64, device=device), None
    ops.gram_accumulate_(acc, x)
    ref = torch.zeros_like(acc)
    _reference.gram_accumulate_(ref, x)
    errs = {"gram_accumulate_": (acc - ref).abs().max().item()}
    m1, m2 = torch.zeros(12, dtype=torch.float64, device=device), torch.zeros(12, dtype=torch.float64, device=device)
    ops.abs_mean_accumulate_(m1, x, 1 / 64)
    ops.abs_max_accumulate_(m2, x)
    errs["abs_mean_accumulate_"] = (m1 - x.abs().mean(0)).abs().max().item()
    errs["abs_max_accumulate_"] = (m2 - x.abs().amax(0)).abs().max().item()
    U, S, Vh = ops.batched_svd(W, 10)
    errs["batched_svd"] = ((U * S) @ Vh - W).abs().max().item()
    w = ops.whitening_factor(acc)
    errs["whitening_factor"] = (w.factor @ w.factor.T - acc).abs().max().item() / acc.abs().max().item()
    y = ops.lowrank_linear(x, U * S, Vh)
    errs["lowrank_linear"] = (y - x @ W.T).abs().max().item()
    return errs


def report() -> dict:
    mod = _native.native()
    info = dict(mod.build_info()) if mod is not None else None
    return {
        "svdzip": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "native_loaded": mod is not None,
        "native_problem": _native.reason(),
        "build_info": info,
        "kernels": _kernels(),
        "self_check_max_error": self_check(),
    }


def format_report(r: dict) -> str:
    lines = [f"svdzip {r['svdzip']}  python {r['python']}  torch {r['torch']}",
             f"platform: {r['platform']}",
             f"CUDA available to torch: {r['torch_cuda_available']}; torch threads: {r['torch_threads']}"]
    if r["native_loaded"]:
        b = r["build_info"]
        lines.append(f"native library: loaded ({b['core']}; built for torch {b['torch_version']}; "
                     f"CUDA backend built: {b['cuda']}; OpenMP (parallel CPU ops): "
                     f"{b.get('openmp', False)})")
    else:
        lines.append(f"native library: NOT loaded, using pure-torch reference ops: {r['native_problem']}")
    lines.append("kernels (CPU / CUDA):")
    for op, k in r["kernels"].items():
        lines.append(f"  {op:22s} {'yes' if k['cpu'] else 'no ':3s} / {'yes' if k['cuda'] else 'no'}")
    lines.append("self-check, max error vs reference:")
    for op, e in r["self_check_max_error"].items():
        lines.append(f"  {op:22s} {e:.2e}  {'ok' if e < 1e-8 else 'FAILED'}")
    return "\n".join(lines)
