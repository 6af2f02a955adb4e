"""The compressed layers as the rest of svdzip sees them: each is described by its spec (its
entry in the rank map: rank, in/out features, bias, and for QuantLowRankLinear the bit widths),
built empty from it, and asked for the weight it applies and the bits it stores."""

from __future__ import annotations

import torch
from torch import nn

from .lowrank_linear import LowRankLinear
from .quant_lowrank import SPEC_KEYS, QuantLowRankLinear, check_spec, layer_bits

COMPRESSED = (LowRankLinear, QuantLowRankLinear)
PLAIN_KEYS = ("rank", "in_features", "out_features", "bias")


def is_quantized(spec: dict) -> bool:
    return any(k in spec for k in SPEC_KEYS if k not in PLAIN_KEYS)


def check(spec: dict, where: str) -> None:
    if is_quantized(spec):
        check_spec(spec, where)
    elif spec["rank"] < 1:
        raise ValueError(f"{where}: rank = {spec['rank']} must be at least 1 without a quantized base")


def spec_of(module: nn.Module) -> dict:
    if isinstance(module, QuantLowRankLinear):
        return module.spec()
    return {"rank": module.rank, "in_features": module.in_features, "out_features": module.out_features,
            "bias": module.bias is not None}


def build(spec: dict, dtype=None, device=None) -> nn.Module:
    """An empty layer of this spec (device "meta": no memory)."""
    if is_quantized(spec):
        return QuantLowRankLinear(spec, dtype=dtype, device=device)
    return LowRankLinear(spec["in_features"], spec["out_features"], spec["rank"], spec["bias"], device, dtype)


def entries(spec: dict, dtype) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(tensor name, dtype, shape) of each tensor such a layer stores."""
    return [(n, t.dtype, tuple(t.shape)) for n, t in build(spec, dtype, "meta").state_dict().items()]


def stored_bits(module: nn.Module) -> int:
    """Bits of the layer's weight as stored (factors, codes, scales; not the bias)."""
    if isinstance(module, QuantLowRankLinear):
        return module.stored_bits()
    return layer_bits(module.out_features, module.in_features, module.rank, float_bits=torch.finfo(module.A.dtype).bits)


def spec_bits(spec: dict, dtype) -> int:
    """Bits a layer of this spec stores for its weight in a model of `dtype` (not the bias)."""
    return layer_bits(spec["out_features"], spec["in_features"], spec["rank"], spec.get("factor_bits", 16),
                      spec.get("base_bits", 0), spec.get("group_size", 128), torch.finfo(dtype).bits)


def effective_weight(module: nn.Module, dtype=torch.float64) -> torch.Tensor:
    if isinstance(module, QuantLowRankLinear):
        return module.effective_weight(dtype)
    return module.A.detach().to(dtype) @ module.B.detach().to(dtype)
