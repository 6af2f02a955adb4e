"""Low-rank KV cache (ASVD): cache the rank-r latents c = x·Bᵀ of compressed k_proj / v_proj
instead of their full outputs, and rebuild K = RoPE(c·Aᵀ + b) and V = c·Aᵀ + b inside
attention.

Works through transformers' own Cache interface and one scoped forward pre-hook per attention
module (no copies of model code): the hook sees the attention input and position ids of the
step and hands the latents to the cache; the model then calls `cache.update(...)` as usual,
which stores the latents and returns the rebuilt past keys/values followed by the exact new
ones. Layers whose k_proj and v_proj are not both low-rank keep a plain dense cache layer.

Values after attention (optional, `values_after_attention=True`; off by default because on
CPU with sdpa it measured slower, 16.2 vs 17.9 tok/s at 1024 tokens: a value width other than
head_dim disables sdpa's GQA path and repeat_kv copies the latents per head): softmax(QKᵀ)·V with
V = C_v·A_vᵀ + b equals (softmax(QKᵀ)·C_v)·A_vᵀ + b (each row of the weights sums to 1), so
past values are never rebuilt: update() returns the latents C_v as the values, attention
weighs them (r wide instead of head_dim), and a pre-hook on o_proj applies each head's slice
of A_v and the bias to the (few) new tokens' outputs. Keys cannot be treated so: RoPE rotates
each past key by its own position after the up-projection, so K is rebuilt in one GEMM per
step (its cos/sin computed once per step for all layers).

    with LowRankKVCache(model) as cache:
        out = model.generate(ids, cache=cache, max_new_tokens=64)
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from .kvcache_layer import LowRankKVLayer
from .nn import LowRankLinear
from .pipeline.walk import decoder_layers
from .rope import rope_functions


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of each decoder block (the child that owns k_proj and v_proj)."""
    out = []
    for i, block in enumerate(decoder_layers(model)):
        found = [m for m in block.modules() if hasattr(m, "k_proj") and hasattr(m, "v_proj")]
        if len(found) != 1:
            raise ValueError(f"LowRankKVCache: block {i} ({type(block).__name__}) has {len(found)} modules "
                             "with k_proj and v_proj; only separate k/v projections are supported")
        out.append(found[0])
    return out


def _check_attention(model: nn.Module, i: int, attn: nn.Module) -> None:
    text = model.config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None)
    if types is not None and types[i] != "full_attention":
        raise ValueError(f"LowRankKVCache: block {i} uses {types[i]!r} attention; only full attention "
                         "is supported (a sliding window would drop latents the rebuild needs)")
    for norm in ("k_norm", "q_norm"):
        if getattr(attn, norm, None) is not None:
            raise ValueError(f"LowRankKVCache: block {i} applies {norm} after the projection; "
                             "not supported (the rebuild would skip it)")


def _lowrank_kv(i: int, attn: nn.Module) -> bool:
    """True when both projections are low-rank with a latent smaller than their output."""
    k, v = attn.k_proj, attn.v_proj
    low = [isinstance(p, LowRankLinear) for p in (k, v)]
    if not any(low):
        return False
    if not all(low):
        raise ValueError(f"LowRankKVCache: block {i} has only one of k_proj / v_proj low-rank "
                         f"({type(k).__name__}, {type(v).__name__}); compress both or neither")
    for name, p in (("k_proj", k), ("v_proj", v)):
        r = p.B.shape[0]
        if r > p.out_features or p.A.shape != (p.out_features, r):
            raise ValueError(f"LowRankKVCache: block {i} {name} has rank {r} with A {tuple(p.A.shape)} "
                             f"for {p.out_features} outputs (heads x head_dim); the latent must be at "
                             "most as wide as the keys/values it replaces")
    return True


class LowRankKVCache(Cache):
    """A transformers Cache that stores rank-r latents for layers with low-rank k/v projections.

    Installs one forward pre-hook per attention module that acts only when this cache is the
    call's cache (`cache` / `past_key_values`), and with values after attention one pre-hook per
    o_proj that acts only right after this cache returned latent values; `close()` (or leaving
    the `with` block) removes them.

    values_after_attention: False (default) = rebuild past values every step; True = weigh the
    latent values and up-project after attention (needs eager or sdpa attention and an o_proj);
    None = True where the attention allows it."""

    def __init__(self, model: nn.Module, values_after_attention: bool | None = False):
        attns = _attention_modules(model)
        after = _values_after_attention(model, attns, values_after_attention)
        layers, self._handles, memo = [], [], {}
        for i, attn in enumerate(attns):
            _check_attention(model, i, attn)
            if _lowrank_kv(i, attn):
                rope, apply = rope_functions(model, attn)
                text = model.config.get_text_config(decoder=True)
                head_dim = getattr(attn, "head_dim", None) or text.hidden_size // text.num_attention_heads
                layers.append(LowRankKVLayer(attn, rope, apply, attn.k_proj.out_features // head_dim, head_dim,
                                             values_after_attention=after, rope_memo=memo))
            else:
                layers.append(DynamicLayer())
        if not any(isinstance(layer, LowRankKVLayer) for layer in layers):
            raise ValueError("LowRankKVCache: no block has low-rank k_proj and v_proj; compress them "
                             "first (e.g. targets=('*k_proj', '*v_proj'))")
        super().__init__(layers=layers)
        self.values_after_attention = after
        me = weakref.ref(self)
        for attn, layer in zip(attns, layers):
            if isinstance(layer, LowRankKVLayer):
                self._handles.append(attn.register_forward_pre_hook(_stager(me, layer), with_kwargs=True))
                if after:
                    self._handles.append(attn.o_proj.register_forward_pre_hook(_up_projector(layer)))
        weakref.finalize(self, _remove, list(self._handles))

    def close(self) -> None:
        _remove(self._handles)
        self._handles = []

    def __enter__(self) -> "LowRankKVCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def nbytes(self) -> int:
        return cache_nbytes(self)


def cache_nbytes(cache: Cache) -> int:
    """Bytes a transformers Cache holds now: keys and values of dense layers; for latent layers the
    buffers behind latents and positions, their spare room included."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, LowRankKVLayer):
            total += layer.storage_nbytes()
            continue
        for t in (layer.keys, layer.values, getattr(layer, "positions", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _values_after_attention(model: nn.Module, attns: list[nn.Module], wanted: bool | None) -> bool:
    """Whether attention can weigh latent values: eager/sdpa attention take a value width other
    than head_dim (flash kernels do not), and o_proj must exist to take the up-projection."""
    if wanted is False:
        return False
    impl = getattr(model.config.get_text_config(decoder=True), "_attn_implementation", None) \
        or getattr(model.config, "_attn_implementation", None)
    why = None
    if impl not in ("eager", "sdpa"):
        why = f"attention implementation {impl!r} (needs 'eager' or 'sdpa')"
    elif not all(isinstance(getattr(a, "o_proj", None), nn.Module) for a in attns):
        why = "an attention module without o_proj"
    if why and wanted:
        raise ValueError(f"LowRankKVCache: values_after_attention=True is not possible with {why}")
    return why is None


def _up_projector(layer: LowRankKVLayer):
    def hook(mod, args):
        if not layer.latent_values_out:
            return None
        layer.latent_values_out = False
        return (layer.up_project_attention_output(args[0]),)
    return hook


def _stager(cache_ref, layer: LowRankKVLayer):
    def hook(mod, args, kwargs):
        layer.latent_values_out = False  # a flag left by a call that raised must not reach this one
        cache = cache_ref()
        # transformers ≥ 5.24 passes the cache to attention as `cache`, earlier as `past_key_values`
        if cache is None or (kwargs.get("cache") is not cache and kwargs.get("past_key_values") is not cache):
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        pos = kwargs.get("position_ids")
        if pos is None:
            raise RuntimeError(f"LowRankKVCache: {type(mod).__name__} was called without position_ids")
        layer.stage(hidden, pos)
        return None
    return hook


def _remove(handles) -> None:
    for h in handles:
        h.remove()


def kv_overrides(model: nn.Module, cache_ratio: float) -> dict[str, float]:
    """Per-module ratios that give every k_proj / v_proj rank = cache_ratio × its outputs
    (the kept fraction of KV-cache entries); use as `overrides` with targets k_proj/v_proj."""
    if not 0 < cache_ratio < 1:
        raise ValueError(f"cache_ratio = {cache_ratio!r} must be in (0, 1)")
    out = {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("k_proj", "v_proj") and isinstance(mod, nn.Linear):
            m, n = mod.weight.shape
            r = max(1, round(cache_ratio * m))
            # rank.rank_for_ratio floors ratio·mn/(m+n); half a rank of slack survives rounding
            out[name] = min(1.0, (r + 0.5) * (m + n) / (m * n))
    if not out:
        raise ValueError("kv_overrides: the model has no k_proj / v_proj Linear modules")
    return out
