"""A one-layer demonstration of why activation-aware SVD matters, on synthetic data.

A layer's inputs are rarely isotropic: a few channels carry most of the energy. Plain SVD
minimises ‖W − Ŵ‖ and ignores that; whitening by the input Gram (SVD-LLM) minimises the
output error ‖(W − Ŵ)X‖ that the model actually feels.
"""

from __future__ import annotations

import torch

from . import ops


def main(seed: int = 0, m: int = 256, n: int = 192, tokens: int = 4096, ratio: float = 0.5) -> int:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
    scales = torch.logspace(0, -3, n, dtype=torch.float64)  # anisotropic input channels
    X = torch.randn(tokens, n, generator=g, dtype=torch.float64) * scales
    k = int(ratio * m * n / (m + n))

    G = ops.gram_accumulate_(torch.zeros(n, n, dtype=torch.float64), X)
    U, S, Vh = ops.batched_svd(W, k)
    plain = (U * S) @ Vh
    wh = ops.whitening_factor(G)
    U2, S2, Vh2 = ops.batched_svd(W @ wh.factor, k)
    whitened = (U2 * S2) @ torch.linalg.solve(wh.factor.T, Vh2.T).T

    def out_err(What: torch.Tensor) -> float:
        return float(torch.linalg.norm(X @ (W - What).T) / torch.linalg.norm(X @ W.T))

    y = ops.lowrank_linear(X, U2 * S2, torch.linalg.solve(wh.factor.T, Vh2.T).T)
    print(f"layer {m}x{n}, {tokens} tokens, ratio {ratio} (kept params) -> rank {k}")
    print(f"whitening path: {wh.path}")
    print(f"relative output error  plain SVD: {out_err(plain):.4f}   whitened SVD: {out_err(whitened):.4f}")
    print(f"low-rank op vs dense product of factors: max diff {(y - X @ whitened.T).abs().max():.2e}")
    return 0
