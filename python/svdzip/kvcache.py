"""Low-rank KV cache (ASVD): cache the rank-r latents c = x·Bᵀ of compressed k_proj / v_proj
instead of their full outputs, and rebuild K = RoPE(c·Aᵀ + b) and V = c·Aᵀ + b inside
attention.

Works through transformers' own Cache interface and one scoped forward pre-hook per attention
module (no copies of model code): the hook sees the attention input and position ids of the
step and hands the latents to the cache; the model then calls `cache.update(...)` as usual,
which stores the latents and returns the rebuilt past keys/values followed by the exact new
ones. Layers whose k_proj and v_proj are not both low-rank keep a plain dense cache layer.

    with LowRankKVCache(model) as cache:
        out = model.generate(ids, cache=cache, max_new_tokens=64)
"""

from __future__ import annotations

import inspect
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from .nn import LowRankLinear
from .pipeline.walk import decoder_layers


class LowRankKVLayer(DynamicLayer):
    """One attention layer's cache: `keys`/`values` hold latents (batch, seq, r) and
    `positions` the position id of each cached token (RoPE is applied on rebuild)."""

    def __init__(self, attn: nn.Module, rope: nn.Module, apply_rope, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.k_proj, self.v_proj = attn.k_proj, attn.v_proj
        self.rope, self.apply_rope = rope, apply_rope
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self.positions: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def stage(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Called by the attention pre-hook: latents and positions of the tokens of this step."""
        with torch.no_grad():
            c_k = F.linear(hidden, self.k_proj.B)
            c_v = F.linear(hidden, self.v_proj.B)
        self._pending = (c_k, c_v, position_ids.expand(hidden.shape[0], -1))

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b = key_states.shape[0]
        self.keys = key_states.new_empty(b, 0, self.k_proj.B.shape[0])
        self.values = key_states.new_empty(b, 0, self.v_proj.B.shape[0])
        self.positions = torch.empty(b, 0, dtype=torch.long, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._pending is None:
            raise RuntimeError("LowRankKVCache: update() without the step's latents; the attention "
                               "pre-hook did not run (was the cache closed, or used with another model?)")
        c_k, c_v, pos = self._pending
        self._pending = None
        if c_k.shape[1] != key_states.shape[-2]:
            raise RuntimeError(f"LowRankKVCache: {c_k.shape[1]} staged tokens but {key_states.shape[-2]} "
                               "new keys; k_proj's input is not the attention input in this model")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past_k, past_v, past_pos = self.keys, self.values, self.positions
        self.keys = torch.cat([past_k, c_k.to(self.dtype)], dim=1)
        self.values = torch.cat([past_v, c_v.to(self.dtype)], dim=1)
        self.positions = torch.cat([past_pos, pos.to(self.device)], dim=1)
        if past_k.shape[1] == 0:
            return key_states, value_states
        k, v = self._rebuild(past_k, past_v, past_pos)
        return torch.cat([k, key_states], dim=-2), torch.cat([v, value_states], dim=-2)

    def _rebuild(self, c_k, c_v, pos):
        """Past keys (RoPE at their own positions) and values, (batch, heads, seq, head_dim)."""
        b, n = c_k.shape[:2]
        k = F.linear(c_k, self.k_proj.A, self.k_proj.bias).view(b, n, self.n_kv_heads, self.head_dim)
        v = F.linear(c_v, self.v_proj.A, self.v_proj.bias).view(b, n, self.n_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self.rope(k, pos)
        k, _ = self.apply_rope(k, k, cos, sin)
        return k, v

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if tokens_to_remove and self.is_initialized:
            self.positions = self.positions[:, : -abs(tokens_to_remove)]

    def reset(self) -> None:
        super().reset()
        self.positions, self._pending = None, None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0:
            super().reorder_cache(beam_idx)
            self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            super().batch_repeat_interleave(repeats)
            self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            super().batch_select_indices(indices)
            self.positions = self.positions[indices, ...]


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


def _rope_functions(model: nn.Module, attn: nn.Module):
    """The model's rotary embedding module and its module-level apply_rotary_pos_emb."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    rope = getattr(base, "rotary_emb", None)
    apply = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None or apply is None:
        raise ValueError(f"LowRankKVCache: {type(attn).__name__} has no single rotary embedding "
                         "(rotary_emb + apply_rotary_pos_emb); this attention is not supported")
    if list(inspect.signature(apply).parameters)[:4] != ["q", "k", "cos", "sin"]:
        raise ValueError(f"LowRankKVCache: {type(attn).__module__}.apply_rotary_pos_emb has an "
                         "unexpected signature; this attention is not supported")
    return rope, apply


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
    call's cache (`cache` / `past_key_values`); `close()` (or leaving the `with` block) removes them."""

    def __init__(self, model: nn.Module):
        attns = _attention_modules(model)
        layers, self._handles = [], []
        for i, attn in enumerate(attns):
            _check_attention(model, i, attn)
            if _lowrank_kv(i, attn):
                rope, apply = _rope_functions(model, attn)
                text = model.config.get_text_config(decoder=True)
                head_dim = getattr(attn, "head_dim", None) or text.hidden_size // text.num_attention_heads
                layers.append(LowRankKVLayer(attn, rope, apply, attn.k_proj.out_features // head_dim, head_dim))
            else:
                layers.append(DynamicLayer())
        if not any(isinstance(layer, LowRankKVLayer) for layer in layers):
            raise ValueError("LowRankKVCache: no block has low-rank k_proj and v_proj; compress them "
                             "first (e.g. targets=('*k_proj', '*v_proj'))")
        super().__init__(layers=layers)
        me = weakref.ref(self)
        for attn, layer in zip(attns, layers):
            if isinstance(layer, LowRankKVLayer):
                self._handles.append(attn.register_forward_pre_hook(_stager(me, layer), with_kwargs=True))
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
    """Bytes a transformers Cache holds now (keys, values and, for latent layers, positions)."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values, getattr(layer, "positions", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _stager(cache_ref, layer: LowRankKVLayer):
    def hook(mod, args, kwargs):
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
