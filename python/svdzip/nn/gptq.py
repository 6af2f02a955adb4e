"""GPTQ (Frantar et al. 2023) into svdzip's QuantMatrix format: error-aware rounding of a weight
on its layer's input Gram H = XᵀX.

Columns are rounded left to right; each column's rounding error, scaled by the inverse Hessian's
Cholesky factor, is pushed onto the columns not yet rounded, so that the layer's output error
‖(W - Ŵ)Xᵀ‖ (not the weight error) is what the rounding keeps small. Groups (2-4 bits) take
their scale and offset from the error-updated weights when the group is reached, as GPTQ does
without act-order; 8 bits use one symmetric scale per row, fixed from W. Updates inside a block of
128 columns are done column by column, the rest of the matrix once per block (the "lazy batch").
Dead input channels (zero Gram diagonal) are zeroed, as in GPTQ; the Hessian is damped by 1 %
of its mean diagonal.
"""

from __future__ import annotations

import torch

from . import packing
from .quant_matrix import QuantMatrix, scale_and_offset

BLOCK = 128


def gptq_quantize(W: torch.Tensor, gram: torch.Tensor, bits: int, group_size: int = 128,
                  damp: float = 0.01, name: str = "weight") -> QuantMatrix:
    rows, cols = W.shape
    if gram.shape != (cols, cols):
        raise ValueError(f"{name}: Gram {tuple(gram.shape)} does not match the weight's {cols} inputs")
    if not torch.isfinite(W).all() or not torch.isfinite(gram).all():
        raise FloatingPointError(f"{name}: cannot quantize: non-finite weight or Gram")
    W = W.detach().double().clone()
    H = gram.double().clone()
    dead = H.diagonal() <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * float(H.diagonal().mean()))
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError: not positive definite even damped
        raise ValueError(f"{name}: the Gram is not positive definite even damped by {damp} "
                         f"of its mean diagonal: {exc}") from exc
    q = QuantMatrix.from_float(W, bits, group_size, name)  # the format and, for 8 bits, the row scales
    top = (1 << bits) - 1
    lo = -127 if bits == 8 else 0
    hi = 127 if bits == 8 else top
    codes = torch.empty(rows, cols, dtype=torch.float64)
    scale = offset = None
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        err = torch.empty(rows, end - start, dtype=torch.float64)
        for j in range(start, end):
            if bits == 8:
                scale, offset = q.scale.double(), torch.zeros(rows, dtype=torch.float64)
            elif j % group_size == 0:
                scale, offset = _group_params(W[:, j:j + group_size], q, j // group_size, name)
            w = W[:, j]
            c = ((w - offset) / scale).round().clamp(lo, hi)
            codes[:, j] = c
            e = (w - (c * scale + offset)) / U[j, j]
            W[:, j + 1:end] -= e[:, None] * U[j, j + 1:end][None, :]
            err[:, j - start] = e
        W[:, end:] -= err @ U[start:end, end:]
    if bits == 8:
        q.codes.copy_(codes.to(torch.int8))
    else:
        q.codes.copy_(packing.pack(codes, bits))
    return q


def _group_params(block: torch.Tensor, q: QuantMatrix, g: int, name: str):
    """Min-max scale and offset of a group's current (error-updated) columns, stored in q (fp16)
    and returned as the fp64 values the codes are computed with."""
    scale, offset = scale_and_offset(block.amin(1), block.amax(1), q.bits, name)
    q.scale[:, g] = scale
    q.offset[:, g] = offset
    return scale.double(), offset.double()
