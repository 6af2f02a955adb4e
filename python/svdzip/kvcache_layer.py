"""One layer of the low-rank KV cache (kvcache.py): the rank-r latents of the past keys and
values, rebuilt (keys rotated by RoPE) inside `update` each step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer

from .rope import is_rotate_half_rope, rotate_half_rope


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
