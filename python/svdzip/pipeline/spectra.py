"""Every target's whitened spectrum, one block at a time (what allocation="loss" needs).

For a module with inputs X (Gram G = XᵀX = S·Sᵀ), the best rank-k fit of its outputs leaves
‖(W − Ŵ_k)·X‖² = Σ_{i>k} σ_i² with σ the singular values of W·S (SVD-LLM's truncation): the
squared singular values are the module's loss curve at every rank at once. One one-shot pass
over the dense model's calibration streams, each block's Grams dropped once its spectra are in.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import ops
from . import replay
from .group import Single
from .streams import Streams
from .trials import block_stats
from .walk import by_block


@torch.no_grad()
def whitened_spectra(source, targets, calibration: torch.Tensor, cfg, batch_size: int = 1,
                     progress: bool = True, group=None) -> dict[str, torch.Tensor]:
    """{module name: σ² (descending, float64, CPU)} of W·S for every target. `source` holds its
    resident parts on entry and again on exit; in a group each rank runs its share of the
    windows, the Grams are summed, and every rank computes every spectrum."""
    group = group or Single()
    blocks = by_block(targets)
    share = calibration[group.share(calibration.shape[0])]
    hidden, args = replay.capture(source.model, source.layers, share, store=source.store, batch_size=batch_size)
    streams = Streams(hidden, args, batch_size)
    source.drop_resident()
    out: dict[str, torch.Tensor] = {}
    last = max(blocks)
    try:
        for b in tqdm(range(last + 1), desc="spectra", disable=not progress, leave=False):
            layer = source.onload(b)
            if b in blocks:
                stats = block_stats(layer, b, blocks[b], streams, cfg, {"gram"}, source.device, group)
                factors: dict[str, torch.Tensor] = {}
                for t in blocks[b]:
                    lead = stats[t.name]["leader"]
                    if lead not in factors:
                        factors[lead] = ops.whitening_factor(stats[t.name]["gram"].double(), cfg.jitter).factor
                    WS = t.module.weight.detach().double() @ factors[lead]
                    out[t.name] = torch.linalg.svdvals(WS).square().cpu()
                del stats, factors
            elif b < last:
                streams.advance(layer, b, source.device)
            source.offload(b)
    finally:
        source.onload_resident()
    return out
