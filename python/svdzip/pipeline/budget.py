"""Expected peak memory of an out-of-core run, from shapes alone (before anything is loaded).

    resident     embeddings, final norm, LM head (held throughout)
    blocks       two dense blocks: the one being compressed, and its factors/next one in flight
    streams      calibration hidden states, inputs and outputs of one block (N x seqlen x d, x2)
    statistics   one Gram per target input of the largest block, fp64 (an upper bound: inputs
                 that q/k/v or gate/up share are counted once each here), plus fp32 scratch
    decompose    fp64 copies of the block's weights for the batched SVDs, plus two m x n fp64
                 buffers of the largest (product, residual)
    activations  one batch through one block: the MLP's widest intermediate x4 and the fp32
                 attention scores (eager attention; SDPA needs less)
    runtime      Python + torch + transformers, measured: ~0.45 GiB RSS after import here
"""

from __future__ import annotations

import math

import torch

RUNTIME = int(0.45 * 2**30)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def estimate(source, blocks: dict, calib_shape, batch_size: int, kinds, gram_products: str) -> dict:
    cfg = source.model.config
    n_windows, seqlen = int(calib_shape[0]), int(calib_shape[1])
    item = torch.empty(0, dtype=source.dtype).element_size()
    d = int(cfg.hidden_size)
    wide = max(d, int(getattr(cfg, "intermediate_size", d) or d))
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    in_blocks = {id(p) for layer in source.layers for p in layer.parameters()}
    resident = sum(_bytes(p) for p in {id(p): p for p in source.model.parameters()}.values()
                   if id(p) not in in_blocks)
    block = max(sum(_bytes(p) for p in layer.parameters()) for layer in source.layers)
    stats = dec = 0
    for targets in blocks.values():
        gram = 8 + (12 if gram_products == "fp32" else 0) if "gram" in kinds else 0
        stats = max(stats, sum(gram * t.shape[1] ** 2 + 16 * t.shape[1] for t in targets))
        dec = max(dec, sum(8 * math.prod(t.shape) for t in targets) + 16 * max(math.prod(t.shape) for t in targets))
    b = min(batch_size, n_windows)
    acts = b * seqlen * wide * item * 4 + b * heads * seqlen * seqlen * 4
    parts = {"resident": resident, "blocks": 2 * block, "streams": 2 * n_windows * seqlen * d * item,
             "statistics": stats, "decompose": dec, "activations": acts, "runtime": RUNTIME}
    parts["total"] = sum(parts.values())
    return parts


def describe(parts: dict, device) -> str:
    body = ", ".join(f"{k} {gib(v)}" for k, v in parts.items() if k != "total")
    where = "" if device.type == "cpu" else " (streams on the host, the rest on " + str(device) + ")"
    return f"expected peak memory {gib(parts['total'])}{where}: {body}"
