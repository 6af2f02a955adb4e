"""Typed entry points to svdzip's numerics.

Each function runs the native op (torch.ops.svdzip.*) when the extension is loaded and
has a kernel for the tensor's device and dtype, and the pure-torch reference otherwise.
Fake kernels registered here let the native ops run under torch.compile.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from . import _native, _reference

_NATIVE_DTYPES = (torch.float32, torch.float64)


def _use_native(op: str, t: torch.Tensor) -> bool:
    return t.dtype in _NATIVE_DTYPES and _native.has_kernel(op, t.device)


def _impl(op: str, t: torch.Tensor):
    """torch.ops.svdzip.<op> when it has a kernel for t's device and dtype, else the reference."""
    return getattr(torch.ops.svdzip, op) if _use_native(op, t) else getattr(_reference, op)


def gram_accumulate_(acc: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """acc (n, n) += alpha * xᵀx over all rows of x (..., n). Returns acc."""
    _impl("gram_accumulate_", acc)(acc, x, alpha)
    return acc


def cross_gram_accumulate_(acc: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                           alpha: float = 1.0) -> torch.Tensor:
    """acc (n, n) += alpha * xᵀy over the rows of x and y (..., n), the same tokens in both:
    the cross-Gram C = X·X̃ᵀ of a layer's dense inputs x and compressed-model inputs y (the
    compensated objective, methods/compensated.py). Returns acc."""
    _impl("cross_gram_accumulate_", acc)(acc, x, y, alpha)
    return acc


def abs_mean_accumulate_(acc: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """acc (n) += alpha * Σ_rows |x|; with alpha = 1/tokens this is ASVD's mean |x|."""
    _impl("abs_mean_accumulate_", acc)(acc, x, alpha)
    return acc


def abs_max_accumulate_(acc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """acc (n) = max(acc, max_rows |x|)."""
    _impl("abs_max_accumulate_", acc)(acc, x)
    return acc


def batched_svd(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-k truncated SVD of A (..., m, n) -> U (..., m, k), S (..., k), Vh (..., k, n)."""
    return _impl("batched_svd", A)(A, k)


def column_pivoted_qr(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (m, n)[:, perm] = Q R: R (min(m, n), n) upper trapezoidal with |R_jj| non-increasing,
    perm (n) int64; Q not formed. LAPACK geqp3 on CPU; on CUDA the same, on a host copy
    (cuSOLVER has no pivoted QR)."""
    return _impl("column_pivoted_qr", A)(A)


@dataclass(frozen=True)
class Whitening:
    """A factor F with F Fᵀ ≈ G and how it was obtained."""

    factor: torch.Tensor
    path: str        # "cholesky", "cholesky+jitter" or "eigen"
    shift: float     # diagonal jitter added, or the eigenvalue floor
    clamped: int     # eigenvalues raised to the floor (eigen path)

    @property
    def triangular(self) -> bool:
        return self.path != "eigen"


def whitening_factor(G: torch.Tensor, jitter: float = 1e-6) -> Whitening:
    """Cholesky of a Gram, with growing jitter, then a clamped-eigen fallback; never NaN."""
    F, info = _impl("whitening_factor", G)(G, jitter)
    path, shift, clamped = info.tolist()
    return Whitening(F, _reference.PATHS[int(path)], float(shift), int(clamped))


LOWRANK_PATHS = ("aten", "op")
_LOWRANK_PATH = ["op"]  # "op": the native op where it has a kernel; "aten": two matmuls always


@contextlib.contextmanager
def lowrank_path(path: str):
    """Within: LowRankLinear runs as svdzip::lowrank_linear ("op", the default where the native
    op has a kernel) or as two aten matmuls ("aten"): what torch.export puts in a graph that must
    run without svdzip's library (export.py)."""
    if path not in LOWRANK_PATHS:
        raise ValueError(f"lowrank_path: {path!r} is not one of {', '.join(LOWRANK_PATHS)}")
    before = _LOWRANK_PATH[0]
    _LOWRANK_PATH[0] = path
    try:
        yield
    finally:
        _LOWRANK_PATH[0] = before


def lowrank_linear(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = (x Bᵀ) Aᵀ + bias without forming W = A B."""
    # The native op has no backward: training through the layer takes the torch path.
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or A.requires_grad or B.requires_grad)
    if (not needs_grad and _LOWRANK_PATH[0] == "op" and _use_native("lowrank_linear", x)
            and A.dtype == B.dtype == x.dtype):
        return torch.ops.svdzip.lowrank_linear(x, A, B, bias)
    return _reference.lowrank_linear(x, A, B, bias)


def _register_fakes() -> None:
    """Shape functions for torch.compile / FakeTensor; only when the schemas exist."""

    @torch.library.register_fake("svdzip::gram_accumulate_")
    def _gram(acc, x, alpha=1.0):
        torch._check(acc.dim() == 2 and acc.shape[0] == x.shape[-1] == acc.shape[1],
                     lambda: f"gram_accumulate_: acc {tuple(acc.shape)} vs x {tuple(x.shape)}")

    @torch.library.register_fake("svdzip::cross_gram_accumulate_")
    def _cross_gram(acc, x, y, alpha=1.0):
        torch._check(acc.dim() == 2 and acc.shape[0] == x.shape[-1] == acc.shape[1] == y.shape[-1],
                     lambda: f"cross_gram_accumulate_: acc {tuple(acc.shape)} vs x {tuple(x.shape)}")
        torch._check(x.numel() == y.numel(), lambda: "cross_gram_accumulate_: x and y rows differ")

    @torch.library.register_fake("svdzip::abs_mean_accumulate_")
    def _abs_mean(acc, x, alpha=1.0):
        torch._check(acc.shape[0] == x.shape[-1], lambda: "abs_mean_accumulate_: shape mismatch")

    @torch.library.register_fake("svdzip::abs_max_accumulate_")
    def _abs_max(acc, x):
        torch._check(acc.shape[0] == x.shape[-1], lambda: "abs_max_accumulate_: shape mismatch")

    @torch.library.register_fake("svdzip::batched_svd")
    def _svd(A, k):
        torch._check(A.dim() >= 2, lambda: f"batched_svd: A must be >= 2-D, got {A.dim()}")
        *batch, m, n = A.shape
        torch._check(1 <= k <= min(m, n), lambda: f"batched_svd: k = {k} out of range")
        return A.new_empty(*batch, m, k), A.new_empty(*batch, k), A.new_empty(*batch, k, n)

    @torch.library.register_fake("svdzip::column_pivoted_qr")
    def _pivoted_qr(A):
        torch._check(A.dim() == 2, lambda: f"column_pivoted_qr: A must be 2-D, got {A.dim()}")
        m, n = A.shape
        return A.new_empty(min(m, n), n), A.new_empty(n, dtype=torch.long)

    @torch.library.register_fake("svdzip::whitening_factor")
    def _whiten(G, jitter=1e-6):
        torch._check(G.dim() == 2 and G.shape[0] == G.shape[1], lambda: "G must be square")
        return G.new_empty(G.shape), G.new_empty(3, dtype=torch.float64)

    @torch.library.register_fake("svdzip::lowrank_linear")
    def _lowrank(x, A, B, bias=None):
        torch._check(A.shape[1] == B.shape[0] and x.shape[-1] == B.shape[1],
                     lambda: "lowrank_linear: shape mismatch")
        return x.new_empty(*x.shape[:-1], A.shape[0])


if _native.native() is not None:
    _register_fakes()
