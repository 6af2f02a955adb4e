"""Bytes: the layer a target becomes when its factors or its weight are quantized.

- `layer_spec`: the rank map entry of a target under a config (the plain four keys unless
  factor_bits < 16 or base_bits > 0), from which offloaded runs plan their layout and
  distributed ranks build the layers they receive.
- `quantized_base`: Q = RTN(W) in base_bits, or the user's GPTQ weight (`base_from`, ctbase.py); the method then fits the pair to W - deq(Q) (its
  own weighting: for svd_llm the activation-whitened truncation of the base's error).
- `make_layer`: the pair as stored. Quantized factors are error-aware: B is quantized first and
  A refitted to it on the Gram, A = W·G·B̂ᵀ(B̂·G·B̂ᵀ)⁻¹, the least-squares answer to
  min ‖(W - A·B̂)·Xᵀ‖ (tests/test_quant.py measures it against quantizing both as they come).
"""

from __future__ import annotations

import math

import torch

from .. import rank
from ..nn import LowRankLinear, QuantLowRankLinear, QuantMatrix, spec_bits
from ..nn.gptq import gptq_quantize
from .ctbase import read_base


def layer_spec(shape, ratio: float, bias: bool, cfg) -> dict:
    m, n = shape
    spec = {"rank": rank.rank_for_ratio(m, n, ratio), "in_features": n, "out_features": m, "bias": bias}
    if cfg.output.quantized:
        out = cfg.output
        spec.update(factor_bits=out.factor_bits, base_bits=out.base_bits, group_size=out.group_size)
    return spec


def ratio_for_bits(targets, cfg, dtype) -> float:
    """The largest kept ratio (one for every target) whose layers store at most `cfg.output.bits` bits
    per targeted weight on average: bits grow with the ratio (ranks are floors), so bisect."""
    weights = sum(t.shape[0] * t.shape[1] for t in targets)
    shapes: dict[tuple, int] = {}
    for t in targets:
        key = (tuple(t.shape), t.module.bias is not None)
        shapes[key] = shapes.get(key, 0) + 1

    def bits_at(ratio: float) -> float:
        return sum(count * spec_bits(layer_spec(shape, ratio, bias, cfg), dtype)
                   for (shape, bias), count in shapes.items()) / weights

    # ratio 1 leaves a module dense at the model's dtype: the top is the largest ratio below it
    lo, hi, out = 1e-9, math.nextafter(1.0, 0.0), cfg.output
    if bits_at(lo) > out.bits:
        raise ValueError(f"bits = {out.bits} is below the least these targets can store: {bits_at(lo):.3f} bits per "
                         f"weight at rank 1" + (f" on a {out.base_bits}-bit base" if out.base_bits else ""))
    if bits_at(hi) <= out.bits:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bits_at(mid) <= out.bits else (lo, mid)
    return lo


def quantized_base(W: torch.Tensor, cfg, name: str, gram: torch.Tensor | None = None) -> QuantMatrix | None:
    """RTN or GPTQ (on `gram`) of W, or module `name`'s weight in the user's compressed-tensors
    checkpoint; None without a base."""
    out = cfg.output
    if not out.base_bits:
        return None
    if out.base_from:
        return read_base(out.base_from, name, tuple(W.shape), out.base_bits, out.group_size)
    if out.base_method == "gptq":
        if gram is None:
            raise ValueError(f"{name}: base_method 'gptq' needs the layer's input Gram, and none was collected")
        return gptq_quantize(W, gram, out.base_bits, out.group_size, name=name)
    return QuantMatrix.from_float(W, out.base_bits, out.group_size, name)


def refit_left(W: torch.Tensor, B: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """argmin_A ‖(W - A·B)·Xᵀ‖_F with G = XᵀX: A = W·G·Bᵀ (B·G·Bᵀ)⁻¹ (fp64; a tiny ridge keeps
    a rank-deficient B·G·Bᵀ solvable)."""
    G = gram.double()
    Bd = B.double()
    GBt = G @ Bd.T
    M = Bd @ GBt
    M.diagonal().add_(1e-10 * float(M.diagonal().abs().max().clamp_min(1e-300)))
    return torch.linalg.solve(M, (W.double() @ GBt).T).T


def make_layer(spec: dict, A: torch.Tensor, B: torch.Tensor, base: QuantMatrix | None, fitted: torch.Tensor,
               gram: torch.Tensor | None, bias, dtype, name: str):
    """The stored layer for factors (A, B) of `fitted` (the matrix the pair approximates)."""
    if "factor_bits" not in spec:
        return LowRankLinear.from_factors(A, B, bias, dtype=dtype)
    if spec["factor_bits"] < 16 and gram is not None:
        B_hat = QuantMatrix.from_float(B, spec["factor_bits"], spec["group_size"], f"{name}.B").dequantize(torch.float64)
        A = refit_left(fitted, B_hat, gram)
        if not torch.isfinite(A).all():
            raise FloatingPointError(f"{name}: refitting A to the quantized B gave non-finite values")
    return QuantLowRankLinear.from_parts(spec, A, B, base, bias, dtype, name)
