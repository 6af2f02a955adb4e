"""Interpolative decomposition (ID): a rank-k factorisation of the weighted matrix
M = l ⊙ W·S by k of its own columns, M ≈ M[:, J]·Z with Z[:, J] = I.

Column-pivoted QR (M[:, perm] = Q·R, LAPACK geqp3, ops.column_pivoted_qr) picks J = perm[:k]
greedily: each next column is the one farthest from the span of those already taken. With
R = [R11 R12] split after k columns, Z[:, perm] = R11⁻¹·[R11 R12], and M[:, J]·Z = Q_k·Q_kᵀ·M:
the projection of M on the span of its k chosen columns. An SVD projects on the best k-space
instead, so the ID's error is never below the SVD's; what it buys is factors made of the
(weighted) weight matrix's own columns. One QR serves every rank (the pivots are a greedy
order): a truncator at rank k costs one k×k triangular solve.

Stored like every method: A = M[:, J] with l undone, B = Z with S undone (weighting.unweight),
so the parameter count at rank k is k·(m + n), the same as a truncated SVD's.
"""

from __future__ import annotations

import torch

from .. import ops
from .weighting import Weighting, unweight, weighted


def coefficients(R: torch.Tensor, perm: torch.Tensor, k: int) -> torch.Tensor:
    """Z (k × n) with M ≈ M[:, perm[:k]]·Z from M's pivoted QR (R, perm)."""
    rows, n = R.shape
    if not 1 <= k <= rows:
        raise ValueError(f"interpolative decomposition: rank {k} must be in [1, min(m, n) = {rows}]")
    d = R.diagonal().abs()
    tol = torch.finfo(R.dtype).eps * max(rows, n) * float(d[0])
    if not float(d[k - 1]) > tol:
        raise ValueError(f"interpolative decomposition: rank {k} exceeds the matrix's numerical rank "
                         f"(|R[{k - 1},{k - 1}]| = {float(d[k - 1]):.3e} <= {tol:.3e})")
    T = torch.linalg.solve_triangular(R[:k, :k], R[:k], upper=True)
    T[:, :k] = torch.eye(k, dtype=R.dtype, device=R.device)  # exact on the chosen columns
    Z = torch.empty_like(T)
    Z[:, perm] = T
    return Z


def interpolative(M: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, Z): the k chosen column indices of M and the coefficients, M ≈ M[:, J]·Z."""
    R, perm = ops.column_pivoted_qr(M)
    return perm[:k].clone(), coefficients(R, perm, k)


def id_truncator(W: torch.Tensor, w: Weighting):
    """k -> (A, B), the rank-k ID of l ⊙ W·S unweighted, for many k from one pivoted QR."""
    M = weighted(W, w)
    R, perm = ops.column_pivoted_qr(M)
    return lambda k: unweight(M[:, perm[:k]], coefficients(R, perm, k), w)


def id_truncate_many(jobs: list[tuple[torch.Tensor, int, Weighting]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rank-k ID factors of each job (W, k, w), as weighting.truncate_many gives the SVD's."""
    return [id_truncator(W, w)(k) for W, k, w in jobs]
