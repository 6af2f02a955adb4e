"""Rotary position embedding (RoPE) as the low-rank KV cache needs it: the model's own rotary
module and apply function found without copying model code, and a cheaper rotation of the
rebuilt keys used only where a check shows it equals the model's own."""

from __future__ import annotations

import functools
import inspect
import sys

import torch
from torch import nn


def rope_functions(model: nn.Module, attn: nn.Module):
    """The model's rotary embedding module and its module-level apply_rotary_pos_emb."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    rope = getattr(base, "rotary_emb", None)
    apply = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None or apply is None:
        raise ValueError(f"LowRankKVCache: {type(attn).__name__} has no single rotary embedding "
                         "(rotary_emb + apply_rotary_pos_emb); this attention is not supported")
    if list(inspect.signature(kernelized_original(apply)).parameters)[:4] != ["q", "k", "cos", "sin"]:
        raise ValueError(f"LowRankKVCache: {type(attn).__module__}.apply_rotary_pos_emb has an "
                         "unexpected signature; this attention is not supported")
    return rope, apply


def kernelized_original(apply):
    """The plain function behind a `kernels` hub wrapper. transformers >= 5.25 with the `kernels`
    package decorates apply_rotary_pos_emb with `use_kernelized_func`, which replaces it by an
    nn.Module whose forward(*args, **kwargs) calls the original (kept in forward's closure as
    `func`) unless a hub kernel is active; the wrapper is still called as the model calls it."""
    forward = getattr(type(apply), "forward", None) if isinstance(apply, nn.Module) else None
    code = getattr(forward, "__code__", None)
    if code is None or "func" not in code.co_freevars:
        return apply
    return forward.__closure__[code.co_freevars.index("func")].cell_contents


def rotate_half_rope(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """k·cos + rotate_half(k)·sin (rotate_half(x) = [-x₂, x₁]) in three ops writing one contiguous
    output, where transformers' form allocates a negation, a concatenation and two products."""
    h = k.shape[-1] // 2
    out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    torch.mul(k, cos, out=out)
    out[..., :h].addcmul_(k[..., h:], sin[..., :h], value=-1)
    out[..., h:].addcmul_(k[..., :h], sin[..., h:])
    return out


@functools.lru_cache(maxsize=32)
def is_rotate_half_rope(apply) -> bool:
    """Whether the model's apply_rotary_pos_emb is the usual rotate-half RoPE (then keys are rotated
    by rotate_half_rope; otherwise by the model's function). Decided by running both once on
    random tensors, so a model with interleaved or partial rotary keeps its own. Remembered per
    function: every layer and every cache of a model asks about the same one."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    cos, sin = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    try:
        _, ref = apply(q, k, cos, sin)
    except Exception:  # noqa: BLE001 - any failure means "not the usual form": use the model's own
        return False
    return torch.allclose(rotate_half_rope(k, cos.unsqueeze(1), sin.unsqueeze(1)), ref, atol=1e-6)
