"""Names, shapes and dtypes of a compressed model's tensors: what is written, in which group.

Group 0 holds everything outside the decoder blocks, group i + 1 block i. The layout of an
offloaded run is planned from the meta model before any block is compressed: a target's
`weight` becomes the tensors of the layer its spec describes (pipeline/quantize.py layer_spec:
`A` (m x k) and `B` (k x n), k from its ratio, or codes and scales); everything else keeps
its shape. Tied tensors (an LM head sharing the embedding) are stored once, under the first name.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.compressed import entries
from .quantize import layer_spec
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


def planned_block(layer: nn.Module, prefix: str, targets, config) -> list[Entry]:
    """Block `layer`'s tensors once its `targets` are compressed (from its meta tensors)."""
    by_weight = {t.name[len(prefix):] + ".weight": t for t in targets}
    out = []
    for name, t in layer.state_dict(keep_vars=True).items():
        target = by_weight.get(name)
        if target is None:
            if not (name.endswith(".bias") and name.removesuffix(".bias") + ".weight" in by_weight):
                out.append(Entry(prefix + name, t.dtype, tuple(t.shape)))  # (a target's bias: in its layer)
            continue
        base = prefix + name[: -len(".weight")] + "."
        spec = layer_spec(target.shape, target.ratio, target.module.bias is not None, config)
        out += [Entry(base + n, dtype, shape) for n, dtype, shape in entries(spec, t.dtype)]
    return out


def planned_rank_map(targets, config) -> dict[str, dict]:
    """The rank map for `targets` (as hf.rank_map gives for a live model); config.json carries it."""
    return {t.name: layer_spec(t.shape, t.ratio, t.module.bias is not None, config) for t in targets}
