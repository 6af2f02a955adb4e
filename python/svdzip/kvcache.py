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
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from .nn import LowRankLinear
from .pipeline.walk import decoder_layers
from .rope import is_rotate_half_rope, rope_functions, rotate_half_rope


class LowRankKVLayer(DynamicLayer):
    """One attention layer's cache: `keys`/`values` hold latents (batch, seq, r) and
    `positions` the position id of each cached token (RoPE is applied on rebuild)."""

    def __init__(self, attn: nn.Module, rope: nn.Module, apply_rope, n_kv_heads: int, head_dim: int,
                 values_after_attention: bool = False, rope_memo: dict | None = None):
        super().__init__()
        self.k_proj, self.v_proj = attn.k_proj, attn.v_proj
        self.rope, self.apply_rope = rope, apply_rope
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self.values_after_attention = values_after_attention
        self.rope_memo = {} if rope_memo is None else rope_memo
        self.positions: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.latent_values_out = False  # set by update(), consumed by the o_proj pre-hook
        self.fast_rope = is_rotate_half_rope(apply_rope)
        self._storage: dict[str, torch.Tensor] = {}  # name -> buffer that keys/values/positions view

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
        first = self.keys.shape[1] == 0
        self._append("keys", c_k.to(self.dtype))
        self._append("values", c_v.to(self.dtype))
        self._append("positions", pos.to(self.device))
        if first:
            return key_states, value_states
        # Every cached token (the new ones included) rebuilt in one GEMM: no concatenation of the
        # rebuilt past with the step's exact keys; the new keys differ from those by rounding only.
        keys = self._rebuild_keys(self.keys, self.positions)
        if self.values_after_attention:
            self.latent_values_out = True
            b, n, r = self.values.shape
            return keys, self.values.view(b, 1, n, r).expand(b, self.n_kv_heads, n, r)
        return keys, self._rebuild_values(self.values)

    def _rebuild_keys(self, c_k, pos):
        """Cached keys with RoPE at their own positions, (batch, kv heads, seq, head_dim)."""
        b, n = c_k.shape[:2]
        k = F.linear(c_k, self.k_proj.A, self.k_proj.bias).view(b, n, self.n_kv_heads, self.head_dim)
        cos, sin = self._cos_sin(k, pos)
        k = k.transpose(1, 2)
        if self.fast_rope:
            return rotate_half_rope(k, cos.unsqueeze(1), sin.unsqueeze(1))
        # the model's own function rotates a query too: give it one kv head's worth, not all
        _, k = self.apply_rope(k[:, :1], k, cos, sin)
        return k

    def _append(self, name: str, new: torch.Tensor) -> None:
        """Append `new` along the sequence to keys / values / positions, which are views of the
        first n tokens of a buffer with some room to spare: a decode step writes one token in place
        instead of copying the whole cache (torch.cat). The buffer grows by max(8, n/16) tokens
        beyond what is needed, so it holds at most ~6 % + 8 tokens unused (counted by nbytes);
        a view that is no longer the buffer's start (after reorder / batch selection) is copied
        into a new one."""
        cur = getattr(self, name)
        buf = self._storage.get(name)
        n, t = cur.shape[1], new.shape[1]
        if (buf is None or n == 0 or cur.data_ptr() != buf.data_ptr() or cur.stride() != buf.stride()
                or buf.shape[0] != cur.shape[0] or buf.shape[1] < n + t):
            buf = cur.new_empty(cur.shape[0], n + t + max(8, (n + t) // 16), *cur.shape[2:])
            buf[:, :n] = cur
            self._storage[name] = buf
        buf[:, n:n + t] = new
        setattr(self, name, buf[:, :n + t])

    def storage_nbytes(self) -> int:
        """Bytes of the buffers behind keys / values / positions (capacity, not just the tokens)."""
        return sum(b.numel() * b.element_size() for b in self._storage.values())

    def _cos_sin(self, k, pos):
        """The rotary cos/sin of the past positions; every layer of a step asks for the same ones,
        so the first computes them and the others reuse them (memo shared by the cache's layers)."""
        key = (id(self.rope), k.dtype, k.device, pos.shape)
        hit = self.rope_memo.get(key)
        if hit is not None and torch.equal(hit[0], pos):
            return hit[1], hit[2]
        cos, sin = self.rope(k, pos)
        self.rope_memo.clear()
        self.rope_memo[key] = (pos, cos, sin)
        return cos, sin

    def _rebuild_values(self, c_v):
        b, n = c_v.shape[:2]
        v = F.linear(c_v, self.v_proj.A, self.v_proj.bias).view(b, n, self.n_kv_heads, self.head_dim)
        return v.transpose(1, 2)

    def up_project_attention_output(self, out: torch.Tensor) -> torch.Tensor:
        """(batch, q, heads·r) attention output over latent values -> (batch, q, heads·head_dim):
        head h uses the A_v rows (and bias) of its kv head h // (heads / kv heads), as repeat_kv does."""
        r = self.v_proj.A.shape[1]
        b, q = out.shape[:2]
        heads = out.shape[-1] // r
        A = self.v_proj.A.view(self.n_kv_heads, self.head_dim, r)
        groups = heads // self.n_kv_heads
        y = torch.einsum("bqgnr,gdr->bqgnd", out.view(b, q, self.n_kv_heads, groups, r), A)
        if self.v_proj.bias is not None:
            y = y + self.v_proj.bias.view(self.n_kv_heads, 1, self.head_dim)
        return y.reshape(b, q, heads * self.head_dim)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if tokens_to_remove and self.is_initialized:
            self.positions = self.positions[:, : -abs(tokens_to_remove)]

    def reset(self) -> None:
        super().reset()
        self.positions, self._pending, self.latent_values_out = None, None, False
        self._storage = {}

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
