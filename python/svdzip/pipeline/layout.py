"""Names, shapes and dtypes of a compressed model's tensors: what is written, in which group.

Group 0 holds everything outside the decoder blocks, group i + 1 block i. The layout of an
offloaded run is planned from the meta model before any block is compressed: a target's
`weight` (m x n) becomes `A` (m x k) and `B` (k x n), k from its ratio; everything else keeps
its shape. Tied tensors (an LM head sharing the embedding) are stored once, under the first name.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import rank
from .shards import Entry


def resident_tensors(model: nn.Module, prefixes: list[str]) -> dict[str, torch.Tensor]:
    """Tensors outside the blocks; a tensor under two names (tied head) under the first only
    (load_compressed re-ties from the model's own structure)."""
    seen, kept = set(), {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen and not any(name.startswith(p) for p in prefixes):
            seen.add(id(t))
            kept[name] = t.detach()
    return kept


def block_tensors(layer: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + n: t.detach() for n, t in layer.state_dict(keep_vars=True).items()}


def planned_block(layer: nn.Module, prefix: str, targets) -> list[Entry]:
    """Block `layer`'s tensors once its `targets` are compressed (from its meta tensors)."""
    by_weight = {t.name[len(prefix):] + ".weight": t for t in targets}
    out = []
    for name, t in layer.state_dict(keep_vars=True).items():
        target = by_weight.get(name)
        if target is None:
            out.append(Entry(prefix + name, t.dtype, tuple(t.shape)))
            continue
        m, n = target.shape
        k = rank.rank_for_ratio(m, n, target.ratio)
        base = prefix + name[: -len(".weight")]
        out += [Entry(base + ".A", t.dtype, (m, k)), Entry(base + ".B", t.dtype, (k, n))]
    return out


def planned_rank_map(targets) -> dict[str, dict]:
    """svdzip_config.json's rank map for `targets` (as hf.rank_map gives for a live model); config.json carries it."""
    out = {}
    for t in targets:
        m, n = t.shape
        out[t.name] = {"rank": rank.rank_for_ratio(m, n, t.ratio), "in_features": n, "out_features": m,
                       "bias": t.module.bias is not None}
    return out
