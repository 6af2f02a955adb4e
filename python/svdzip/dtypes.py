"""Storing fp64 factors in the model's dtype without overflow.

Decomposition runs in fp64; the factors are stored in the model's dtype. fp16 tops out at
65,504, and whitened factors can exceed that even when their product is an ordinary weight:
B = Σ^½·Vᵀ·S⁻¹ grows with the inverse of the input's scale (a near-dead channel gives a huge
column of S⁻¹), which is how the ASVD reference code ends up with NaN in fp16. The product A·B
is what the layer computes, so each rank-1 component (column i of A, row i of B) may be
rescaled by d and 1/d freely; choosing d so that both have the same largest magnitude makes
the largest entry of either factor as small as it can be (√(max|A_i|·max|B_i|)). That
balancing is applied only when the plain split would not fit, so fp32/fp64 factors stay
bit-identical to the method's own split. If even the balanced split (or the product itself)
does not fit, the module is named in an OverflowError: never a silent Inf/NaN.
"""

from __future__ import annotations

import torch

# Leave headroom: activations of magnitude > 1 multiply the factors in the forward.
_HEADROOM = 0.5


def dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16 (as config.json and svdzip_config.json write it)."""
    return str(dtype).removeprefix("torch.")


def model_dtype(model) -> str:
    """The dtype name of a model's (first) parameter."""
    return dtype_name(next(model.parameters()).dtype)


def _limit(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max) * _HEADROOM


def balance(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A·diag(d), diag(1/d)·B) with d_i = √(max|B_i,:| / max|A_:,i|): same product, equal
    largest magnitude in column i of A and row i of B."""
    a = A.abs().amax(0)
    b = B.abs().amax(1)
    ok = (a > 0) & (b > 0)
    d = torch.where(ok, (b / torch.where(ok, a, 1)).sqrt(), torch.ones_like(a))
    return A * d, B / d[:, None]


def to_storage(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype, name: str,
               product_max: float | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(A, B, balanced) ready to cast to `dtype`. `product_max` = max|A·B| if the caller has it.
    Raises OverflowError naming `name` when the factors cannot be stored in `dtype`."""
    if not dtype.is_floating_point:
        raise TypeError(f"{name}: cannot store factors as {dtype}")
    limit = _limit(dtype)
    if product_max is not None and product_max > limit:
        raise OverflowError(f"{name}: the compressed weight reaches {product_max:.4g}, beyond "
                            f"{dtype}'s usable range ({limit:.4g}); compress in float32 or bfloat16")
    biggest = max(float(A.abs().max()), float(B.abs().max()))
    if biggest <= limit:
        return A, B, False
    A2, B2 = balance(A, B)
    biggest2 = max(float(A2.abs().max()), float(B2.abs().max()))
    if biggest2 > limit:
        raise OverflowError(f"{name}: factor entries reach {biggest:.4g} ({biggest2:.4g} after "
                            f"balancing the split), beyond {dtype}'s usable range ({limit:.4g}); "
                            "compress in float32 or bfloat16")
    return A2, B2, True


def all_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """torch.isfinite(t).all() in slices: on a whole 136M-element embedding isfinite's
    temporaries peaked at 0.9 GB; a slice's are a few MB."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))
