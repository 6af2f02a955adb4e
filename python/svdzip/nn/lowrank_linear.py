"""LowRankLinear: y = (x Bᵀ) Aᵀ + bias, the compressed stand-in for nn.Linear."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops


class LowRankLinear(nn.Module):
    """A (out×rank) and B (rank×in) replace the out×in weight; forward never forms A·B."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank = {rank} must be in [1, {min(in_features, out_features)}] "
                             f"for a {out_features}x{in_features} layer")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.B = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None,
                     dtype=None) -> "LowRankLinear":
        """Wrap given factors (cast to `dtype`, default A's). Rejects non-finite values."""
        for name, t in (("A", A), ("B", B), ("bias", bias)):
            if t is not None and not torch.isfinite(t).all():
                raise ValueError(f"LowRankLinear: factor {name} has non-finite values")
        dtype = dtype or A.dtype
        mod = cls(B.shape[1], A.shape[0], A.shape[1], bias is not None, A.device, dtype)
        with torch.no_grad():
            mod.A.copy_(A)
            mod.B.copy_(B)
            if bias is not None:
                mod.bias.copy_(bias)
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """Plain truncated SVD of a Linear (√Σ split between the factors)."""
        W = linear.weight.detach().double()
        U, S, Vh = ops.batched_svd(W, rank)
        root = S.sqrt()
        return cls.from_factors(U * root, root[:, None] * Vh, linear.bias, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.lowrank_linear(x, self.A, self.B, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")
