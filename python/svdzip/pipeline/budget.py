"""Expected peak memory of an out-of-core run, from shapes alone (before anything is loaded).

    resident     embeddings, final norm, LM head: held for the capture of block 0's inputs
                 only, then dropped (so the total counts max(resident, block loop))
    blocks       two dense blocks: the one being compressed, and its factors/next one in flight
    streams      calibration hidden states (N x seqlen x d): each window's output takes its
                 input's place (Streams.run outputs="replace"), so one list plus one batch
    statistics   one Gram per target input of the largest block, fp64 (an upper bound: inputs
                 that q/k/v or gate/up share are counted once each here), plus fp32 scratch
    decompose    whitening of the widest input, the largest batched SVD, two m x n buffers
                 (see _decompose_bytes; fitted to measured block peaks)
    activations  one batch through one block: the MLP's widest intermediate x4 and the fp32
                 attention scores (eager attention; SDPA needs less)
    gradients    FWSVD only: the per-window gradients flowing back, one window's backward
    trials       allocation="sensitivity" only: the trial hidden states of one sweep (at most
                 trial_memory; pipeline/trials.py)
    runtime      Python + torch + transformers + tokenizer + calibration tokens (~0.36 GiB
                 RssAnon here) and building the meta model (~0.12 GiB)
"""

from __future__ import annotations

import math

import torch

RUNTIME = int(0.5 * 2**30)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def estimate(source, blocks: dict, calib_shape, batch_size: int, kinds, gram_products: str,
             trials: int = 0, window: int = 1, world: int = 1) -> dict:
    """Per rank: `calib_shape` is this rank's share; a distributed one-shot run (`window`
    blocks at a time over `world` ranks, pipeline/loop.py run_windows) holds the window's
    blocks and about window / world blocks' statistics besides the block being collected."""
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
    gram = 8 + (12 if gram_products == "fp32" else 0) if "gram" in kinds else 0
    for targets in blocks.values():
        stats = max(stats, sum(gram * t.shape[1] ** 2 + 16 * t.shape[1] for t in targets))
        dec = max(dec, _decompose_bytes(targets, "gram" in kinds))
    b = min(batch_size, n_windows)
    acts = b * seqlen * wide * item * 4 + b * heads * seqlen * seqlen * 4
    stream = n_windows * seqlen * d * item
    held_stats = stats * (1 + math.ceil(window / world)) if window > 1 else stats
    parts = {"resident": resident, "blocks": (window + 1) * block,
             "streams": stream + stream // n_windows * min(batch_size, n_windows),
             "statistics": held_stats, "decompose": dec, "activations": acts, "runtime": RUNTIME}
    if "fisher" in kinds:  # per-window gradients, and one window's backward through one block
        parts["gradients"] = stream + 2 * (seqlen * wide * item * 4 + heads * seqlen * seqlen * 4)
    if trials:
        parts["trials"] = trials
    # embeddings and head are dropped once block 0's inputs are caught, before the first block
    loop = sum(v for k, v in parts.items() if k in ("blocks", "statistics", "decompose", "activations"))
    extra = parts.get("gradients", 0) + parts.get("trials", 0)
    parts["total"] = parts["runtime"] + parts["streams"] + extra + max(parts["resident"], loop)
    return parts


def _decompose_bytes(targets, whitened: bool) -> int:
    """Fitted to the measured peaks of SmolLM2's and Qwen2.5-0.5B's blocks (bench_offload):
    the whitening of the widest input (factor, its copy and the triangular solve's: 3 n x n
    fp64), the largest same-shape group's batched SVD (stack, U, workspace: 3 x its fp64
    size), and two m x n fp64 buffers (product and residual) of the largest target."""
    groups: dict = {}
    for t in targets:
        groups[t.shape] = groups.get(t.shape, 0) + 1
    widest = max(t.shape[1] for t in targets)
    svd = max(3 * 8 * c * math.prod(shape) for shape, c in groups.items())
    return (24 * widest ** 2 if whitened else 0) + svd + 16 * max(math.prod(t.shape) for t in targets)


def describe(parts: dict, device) -> str:
    body = ", ".join(f"{k} {gib(v)}" for k, v in parts.items() if k != "total")
    where = "" if device.type == "cpu" else " (streams on the host, the rest on " + str(device) + ")"
    return f"expected peak memory {gib(parts['total'])}{where}: {body}"
