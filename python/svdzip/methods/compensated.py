"""The error-compensated objective (SAES-SVD's idea, in closed form).

Columns are tokens: X (n×T) are a layer's inputs in the dense model, X̃ (n×T) its inputs in the
model compressed so far, at the same tokens. Ordinary whitening (SVD-LLM) fits the layer to
its own inputs, min ‖(W − Ŵ)·X̃‖; the compensated objective fits the compressed layer, fed
what it will really see, to what the dense layer produced on the dense inputs:

    min over rank-k Ŵ of  ‖W·X − Ŵ·X̃‖_F²,   G̃ = X̃X̃ᵀ,  C = X·X̃ᵀ  (both n×n, streamed).

Expanding, ‖W·X‖² − 2·tr(Ŵ·Cᵀ·Wᵀ) + tr(Ŵ·G̃·Ŵᵀ). Let W* = W·C·G̃⁻¹, so W*·G̃ = W·C and
tr(Ŵ·Cᵀ·Wᵀ) = tr(Ŵ·G̃·W*ᵀ). Completing the square,

    ‖W·X − Ŵ·X̃‖² = ‖W·X‖² − tr(W*·G̃·W*ᵀ) + tr((Ŵ − W*)·G̃·(Ŵ − W*)ᵀ)
                 = const + ‖(Ŵ − W*)·S̃‖²,   S̃·S̃ᵀ = G̃.

The first two terms do not depend on Ŵ, so the optimum is the G̃-whitened rank-k truncation of
W*: exactly SVD-LLM's problem with W replaced by W* (the unrestricted least-squares map from
compressed inputs to dense outputs) and the Gram by G̃. Every whitened method (svd_llm, the
whitened first stage of nsvd and ressvd) therefore runs unchanged on (W*, G̃). When X̃ = X,
C = G̃ and W* = W: ordinary whitening. A singular G̃ (dead channels: C has zero columns there
too) goes through the same jitter / eigen fallbacks as whitening, and the path is reported.
"""

from __future__ import annotations

import torch

from .. import ops


def target_map(gram: torch.Tensor, cross: torch.Tensor, jitter: float, strength: float = 1.0) -> tuple[torch.Tensor, dict]:
    """(T in float64, notes): W* = W·T with T = (1 − β)·I + β·C·G̃⁻¹, β = `strength`: the
    target outputs W·(X̃ + β·(X − X̃)), from plain whitening on the compressed inputs (β = 0)
    to full compensation (β = 1). G̃⁻¹ through the whitening factor F (F·Fᵀ ≈ G̃, Cholesky
    with growing jitter or a floored eigen factor): C·G̃⁻¹ = (F⁻ᵀ·F⁻¹·Cᵀ)ᵀ."""
    if gram.shape != cross.shape or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"compensated objective: Gram {tuple(gram.shape)} and cross-Gram "
                         f"{tuple(cross.shape)} must be the same n×n")
    wf = ops.whitening_factor(gram.double(), jitter)
    F, Ct = wf.factor, cross.double().T
    if wf.triangular:
        Y = torch.linalg.solve_triangular(F, Ct, upper=False)
        Tt = torch.linalg.solve_triangular(F.T, Y, upper=True)
    else:
        Tt = torch.linalg.solve(F.T, torch.linalg.solve(F, Ct))
    T = Tt.T.contiguous()
    if strength != 1.0:
        T.mul_(strength).diagonal().add_(1.0 - strength)
    notes = {"compensation_whitening": wf.path, "compensation_shift": wf.shift}
    return T, notes


def compensated_weight(W: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """W* = W·T (float64): the matrix the whitened truncation is fitted to."""
    return W.double() @ T


@torch.no_grad()
def objective(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor, X_tilde: torch.Tensor) -> float:
    """‖W·X − Ŵ·X̃‖_F with X, X̃ as (tokens, n) rows, for tests and reports."""
    return float((X.double() @ W.double().T - X_tilde.double() @ W_hat.double().T).norm())
