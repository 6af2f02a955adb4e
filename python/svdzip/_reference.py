"""Pure-torch reference of every native op: the ground truth in tests, and the fallback
when the native library is unavailable or has no kernel for a device or dtype.

Same signatures, results and error messages (in substance) as torch.ops.svdzip.*.
"""

from __future__ import annotations

import torch

PATHS = ("cholesky", "cholesky+jitter", "eigen")
JITTER_TRIES = 5


def _rows(x: torch.Tensor, acc: torch.Tensor, op: str) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be floating point, got {x.dtype}")
    if acc.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: acc must be float32 or float64, got {acc.dtype}")
    if acc.dtype == torch.float32 and x.dtype == torch.float64:
        raise TypeError(f"{op}: float64 x into a float32 acc would lose precision")
    n = x.shape[-1]
    if acc.shape[0] != n or (acc.dim() == 2 and acc.shape[1] != n):
        raise ValueError(f"{op}: acc shape {tuple(acc.shape)} does not match x's last dim {n}")
    return x.reshape(-1, n).to(acc.dtype)


def gram_accumulate_(acc: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> None:
    r = _rows(x, acc, "gram_accumulate_")
    acc.addmm_(r.T, r, alpha=alpha)


def cross_gram_accumulate_(acc: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> None:
    if acc.dim() != 2:
        raise ValueError(f"cross_gram_accumulate_: acc shape {tuple(acc.shape)} must be (n, n)")
    xr, yr = _rows(x, acc, "cross_gram_accumulate_"), _rows(y, acc, "cross_gram_accumulate_")
    if xr.shape[0] != yr.shape[0]:
        raise ValueError(f"cross_gram_accumulate_: x {tuple(x.shape)} and y {tuple(y.shape)} must "
                         "hold the same rows (the same tokens)")
    acc.addmm_(xr.T, yr, alpha=alpha)


def abs_mean_accumulate_(acc: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> None:
    acc.add_(_rows(x, acc, "abs_mean_accumulate_").abs().sum(0), alpha=alpha)


def abs_max_accumulate_(acc: torch.Tensor, x: torch.Tensor) -> None:
    r = _rows(x, acc, "abs_max_accumulate_")
    if r.shape[0]:
        acc.copy_(torch.maximum(acc, r.abs().amax(0)))  # maximum propagates NaN


def batched_svd(A: torch.Tensor, k: int):
    if A.dim() < 2:
        raise ValueError(f"batched_svd: A must have at least 2 dims, got {tuple(A.shape)}")
    m, n = A.shape[-2:]
    if not 1 <= k <= min(m, n):
        raise ValueError(f"batched_svd: k = {k} must be in [1, min(m, n) = {min(m, n)}] "
                         f"for A of shape {tuple(A.shape)}")
    if not torch.isfinite(A).all():
        raise RuntimeError("svdzip::batched_svd: batched_svd input has a non-finite value")
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    return U[..., :k].contiguous(), S[..., :k].contiguous(), Vh[..., :k, :].contiguous()


def column_pivoted_qr(A: torch.Tensor):
    """Greedy Gram-Schmidt with the geqp3 pivot rule (the column of largest residual norm
    next), each new direction orthogonalised twice: R (min(m, n), n) with A[:, perm] = Q R.
    R's diagonal is non-negative here (LAPACK's may carry signs); the columns after the
    first min(m, n) pivots keep their original order."""
    if A.dim() != 2 or A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"column_pivoted_qr: A must be a non-empty matrix, got {tuple(A.shape)}")
    if not torch.isfinite(A).all():
        raise RuntimeError("svdzip::column_pivoted_qr: column_pivoted_qr: input has a non-finite value")
    m, n = A.shape
    k = min(m, n)
    res = A.clone()
    Q = A.new_zeros(m, k)
    chosen: list[int] = []
    free = torch.ones(n, dtype=torch.bool, device=A.device)
    for j in range(k):
        norms = res.pow(2).sum(0).masked_fill(~free, -1.0)
        p = int(norms.argmax())
        q = res[:, p].clone()
        for _ in range(2):
            q -= Q[:, :j] @ (Q[:, :j].T @ q)
        nrm = q.norm()
        if nrm > 0:
            Q[:, j] = q / nrm
        res -= Q[:, j:j + 1] @ (Q[:, j:j + 1].T @ res)
        chosen.append(p)
        free[p] = False
    perm = torch.tensor(chosen + [i for i in range(n) if free[i]], dtype=torch.long, device=A.device)
    R = (Q.T @ A[:, perm]).triu()
    return R, perm


def whitening_factor(G: torch.Tensor, jitter: float = 1e-6):
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"whitening_factor: G must be a non-empty square matrix, got {tuple(G.shape)}")
    if jitter < 0:
        raise ValueError(f"whitening_factor: jitter = {jitter} must be >= 0")
    if not torch.isfinite(G).all():
        raise RuntimeError("svdzip::whitening_factor: whitening_factor Gram has a non-finite value")
    n = G.shape[0]
    mean_diag = float(G.diagonal().sum()) / n
    if not mean_diag > 0:
        raise RuntimeError(f"svdzip::whitening_factor: Gram mean diagonal = {mean_diag} "
                           "(no signal: all inputs zero?)")
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    shifts = [0.0] + [jitter * 10**i * mean_diag for i in range(JITTER_TRIES) if jitter > 0]
    for i, shift in enumerate(shifts):
        L, info = torch.linalg.cholesky_ex(G + shift * eye)
        if int(info) == 0:
            return L, _info(0 if i == 0 else 1, shift, 0, G.device)
    F, floor, clamped = eigen_factor(G, jitter)
    return F, _info(2, floor, clamped, G.device)


def eigen_factor(G: torch.Tensor, jitter: float) -> tuple[torch.Tensor, float, int]:
    """Q·Λ^½ with eigenvalues floored at max(jitter, n·eps)·λmax: (factor, floor, clamped)."""
    w, Q = torch.linalg.eigh(G)
    floor = max(jitter, torch.finfo(G.dtype).eps * G.shape[0]) * float(w[-1])
    return Q * w.clamp_min(floor).sqrt(), floor, int((w < floor).sum())


def _info(path: int, shift: float, clamped: int, device) -> torch.Tensor:
    return torch.tensor([path, shift, clamped], dtype=torch.float64, device=device)


def lowrank_linear(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias=None) -> torch.Tensor:
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"lowrank_linear: A is {tuple(A.shape)} but B is {tuple(B.shape)} "
                         "(need A (m, k) and B (k, n))")
    if x.shape[-1] != B.shape[1]:
        raise ValueError(f"lowrank_linear: x's last dim {x.shape[-1]} != B's in-features {B.shape[1]}")
    y = (x @ B.T) @ A.T
    return y + bias if bias is not None else y
