"""QuantLowRankLinear: y = x·deq(Q)ᵀ + (x·Bᵀ)·Aᵀ + bias.

Q is an optional b-bit base (the quantized weight; `base_bits` 0 = none) and (A, B) a rank-r
pair, kept in the model's dtype (`factor_bits` 16) or quantized to 8 or 4 bits (QuantMatrix).
Without a base this is a low-rank layer with quantized factors; with one, A·B corrects the
base's error. Rank 0 is allowed with a base (plain round-to-nearest, the baseline). The
module is described by its spec (the rank map entry), from which it is built empty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config_quant import FACTOR_BITS
from .quant_matrix import QuantMatrix, check_format, stored_bits

SPEC_KEYS = ("rank", "in_features", "out_features", "bias", "factor_bits", "base_bits", "group_size")


def check_spec(spec: dict, where: str) -> None:
    bits, base, g = spec.get("factor_bits"), spec.get("base_bits"), spec.get("group_size")
    if bits not in FACTOR_BITS:
        raise ValueError(f"{where}: factor_bits = {bits!r} must be one of {FACTOR_BITS}")
    if base != 0:
        check_format(base, g, f"{where}: base")
    if bits < 16:
        check_format(bits, g, f"{where}: factors")
    r, m, n = spec.get("rank"), spec.get("out_features"), spec.get("in_features")
    if not (isinstance(r, int) and isinstance(m, int) and isinstance(n, int) and m > 0 and n > 0):
        raise ValueError(f"{where}: rank / in_features / out_features = {r!r} / {n!r} / {m!r} must be integers")
    if not (1 if base == 0 else 0) <= r <= min(m, n):
        raise ValueError(f"{where}: rank = {r} must be in [{1 if base == 0 else 0}, {min(m, n)}] for a {m}x{n} "
                         f"layer{'' if base else ' without a quantized base'}")


def layer_bits(m: int, n: int, rank: int, factor_bits: int = 16, base_bits: int = 0, group_size: int = 128,
               float_bits: int = 32) -> int:
    """Bits an m x n compressed layer stores for its weight (not the bias): the base's codes and
    scales, then the pair at `rank` in factor_bits (16: floats of `float_bits`, the model's dtype).
    The one count of stored bits: the layers report it, the byte budget plans with it, and a test
    checks it against the tensors a layer of each spec really holds."""
    total = stored_bits(m, n, base_bits, group_size) if base_bits else 0
    if rank and factor_bits == 16:
        total += (m + n) * rank * float_bits
    elif rank:
        total += stored_bits(m, rank, factor_bits, group_size) + stored_bits(rank, n, factor_bits, group_size)
    return total


class QuantLowRankLinear(nn.Module):
    def __init__(self, spec: dict, dtype=None, device=None) -> None:
        super().__init__()
        check_spec(spec, "QuantLowRankLinear")
        self.in_features, self.out_features, self.rank = spec["in_features"], spec["out_features"], spec["rank"]
        self.factor_bits, self.base_bits, self.group_size = spec["factor_bits"], spec["base_bits"], spec["group_size"]
        m, n, r, kw = self.out_features, self.in_features, self.rank, {"device": device, "dtype": dtype}
        self.base = QuantMatrix(m, n, self.base_bits, self.group_size, device) if self.base_bits else None
        if r == 0:
            self.A = self.B = None
        elif self.factor_bits == 16:
            self.A = nn.Parameter(torch.empty(m, r, **kw))
            self.B = nn.Parameter(torch.empty(r, n, **kw))
        else:
            self.A = QuantMatrix(m, r, self.factor_bits, self.group_size, device)
            self.B = QuantMatrix(r, n, self.factor_bits, self.group_size, device)
        self.bias = nn.Parameter(torch.empty(m, **kw)) if spec["bias"] else None

    def spec(self) -> dict:
        return {"rank": self.rank, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "factor_bits": self.factor_bits, "base_bits": self.base_bits,
                "group_size": self.group_size}

    @classmethod
    def from_parts(cls, spec: dict, A, B, base: QuantMatrix | None, bias, dtype, name: str = "module"):
        """Wrap a computed base and pair (A, B fp tensors; quantized here when factor_bits < 16)."""
        mod = cls(spec, dtype=dtype, device="meta")
        mod.base = base
        if spec["rank"] and spec["factor_bits"] == 16:
            mod.A, mod.B = nn.Parameter(A.to(dtype)), nn.Parameter(B.to(dtype))
        elif spec["rank"]:
            g = spec["group_size"]
            mod.A = QuantMatrix.from_float(A, spec["factor_bits"], g, f"{name}.A")
            mod.B = QuantMatrix.from_float(B, spec["factor_bits"], g, f"{name}.B")
        mod.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype).clone())
        return mod

    @classmethod
    def base_only(cls, base: QuantMatrix, bias, dtype):
        """A quantized weight alone (rank 0: no pair), e.g. a plain RTN or GPTQ checkpoint's layer."""
        spec = {"rank": 0, "in_features": base.cols, "out_features": base.rows, "bias": bias is not None,
                "factor_bits": 16, "base_bits": base.bits, "group_size": base.group_size}
        return cls.from_parts(spec, None, None, base, bias, dtype)

    def factors(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) as stored (dequantised), or None at rank 0."""
        if self.rank == 0:
            return None
        if self.factor_bits == 16:
            return self.A.detach().to(dtype), self.B.detach().to(dtype)
        return self.A.dequantize(dtype), self.B.dequantize(dtype)

    def effective_weight(self, dtype=torch.float64) -> torch.Tensor:
        """deq(Q) + A·B: the weight this layer applies (the reported errors use it)."""
        W = self.base.dequantize(dtype) if self.base is not None else \
            torch.zeros(self.out_features, self.in_features, dtype=dtype)
        pair = self.factors(dtype)
        return W if pair is None else W.addmm_(*pair)

    def stored_bits(self) -> int:
        """Bits of the stored weight (codes, scales, factors; not the bias)."""
        float_bits = torch.finfo(self.A.dtype).bits if isinstance(self.A, torch.Tensor) else 32
        return layer_bits(self.out_features, self.in_features, self.rank, self.factor_bits, self.base_bits,
                          self.group_size, float_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor_bits < 16 and self.A.runs_kernel(x):
            return self._kernel_forward(x)
        y = None
        if self.rank:
            h = self.B(x) if self.factor_bits < 16 else F.linear(x, self.B)
            y = self.A(h) if self.factor_bits < 16 else F.linear(h, self.A)
        if self.base is not None:
            y = self.base(x) if y is None else y.add_(self.base(x))
        return y if self.bias is None else y.add_(self.bias)

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized factors on CPU: one bf16 copy of the input, the rank-r intermediate kept in
        bf16 and in the kernels' padded width between the two calls (B's padded rows are 0).
        Written tight: at batch 1 the Python around two ~10 µs kernels is what costs."""
        n, r = self.in_features, self.rank
        mm_b, cols_b = self.B.kernel()
        mm_a, cols_a = self.A.kernel()
        flat = x.reshape(-1, n).to(torch.bfloat16)
        xin = flat if cols_b == n else F.pad(flat, (0, cols_b - n))
        h = mm_b(xin)
        if h.shape[1] != cols_a:
            h = F.pad(h[:, :r], (0, cols_a - r))
        y = mm_a(h)
        if self.base is not None:
            mm_q, cols_q = self.base.kernel()
            y = y.add_(mm_q(xin if cols_q == cols_b else F.pad(flat, (0, cols_q - n))))
        if y.shape[1] != self.out_features:
            y = y[:, : self.out_features]
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"factor_bits={self.factor_bits}, base_bits={self.base_bits}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")

