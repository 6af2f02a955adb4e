"""Every target's whitened spectrum, one block at a time (what allocation="loss" needs).

For a module with inputs X (Gram G = XᵀX = S·Sᵀ), the best rank-k fit of its outputs leaves
‖(W − Ŵ_k)·X‖² = Σ_{i>k} σ_i² with σ the singular values of W·S (SVD-LLM's truncation): the
squared singular values are the module's loss curve at every rank at once. One one-shot pass
over the dense model's calibration streams, each block's Grams dropped once its spectra are in.

With `probe` (allocation "probe" importance) the same pass also measures what each module's
truncation does at its block's output: the module alone is replaced by its whitened rank-k
truncation Ŵ_k = U_k·U_kᵀ·W (U: left singular vectors of W·S, so Ŵ_k·S is the best rank-k
fit of W·S) at k = rank of `probe.ratio`, the block is rerun on the first `probe.windows`
windows, and the change ΔZ of its output is scored with the diagonal Fisher F at that output:
½·Σ F·ΔZ² per window, the second-order loss increase. Unlike a sensitivity trial this runs one
block, not the rest of the model, and once per module, not per candidate ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import ops, rank
from . import replay
from .group import Single
from .streams import Streams
from .trials import block_stats
from .walk import by_block, visit


@dataclass
class Probe:
    fisher: dict[int, torch.Tensor]  # block -> Σ (∂L/∂z)² per output channel (block_output_fisher)
    windows: int                     # probe on the first `windows` windows of this rank's share (allocation/loss.py)
    ratio: float                     # each module truncated to this ratio's rank
    scores: dict[str, float] | None = None  # filled: module -> ½·Σ F·ΔZ² summed over the probe windows
    ranks: dict[str, int] | None = None     # filled: module -> the probe's rank


@torch.no_grad()
def _probe_block(layer, targets, left: dict[str, torch.Tensor], inputs, outputs, args, fisher: torch.Tensor,
                 probe: Probe) -> None:
    for t in targets:
        w = t.module.weight
        m, n = w.shape
        k = rank.rank_for_ratio(m, n, probe.ratio)
        probe.ranks[t.name] = k
        if not inputs:  # a rank whose share holds none of the probe windows adds nothing
            probe.scores[t.name] = 0.0
            continue
        f = fisher.to(outputs[0].device, torch.float64)
        U = left[t.name][:, :k]
        original = w.detach().clone()
        try:
            w.copy_((U @ (U.T @ original.double())).to(w.dtype))
            out = replay.run_block(layer, inputs, args)
        finally:
            w.copy_(original)
        score = sum(float(((o.double() - z.double()).square().sum(tuple(range(o.dim() - 1))) * f).sum())
                    for o, z in zip(out, outputs))
        if not math.isfinite(score):
            raise FloatingPointError(f"{t.name}: the probe's loss estimate is {score} (non-finite block output)")
        probe.scores[t.name] = 0.5 * score


@torch.no_grad()
def _block_spectra(targets, stats: dict, jitter: float, out: dict, keep_left: bool) -> dict[str, torch.Tensor]:
    """σ² of W·S for the block's targets into `out`; their left singular vectors if `keep_left`.
    Modules that share an input share its Gram (its leader's): each Gram is let go once its
    whitening factor exists, and the factor once its modules' spectra do, so at most one of each
    is alive (Qwen2.5's down_proj: 189 MB each in fp64)."""
    groups: dict[str, list] = {}
    for t in targets:
        groups.setdefault(stats[t.name]["leader"], []).append(t)
    left: dict[str, torch.Tensor] = {}
    for members in groups.values():
        gram = stats[members[0].name].pop("gram")  # the members' one shared dict: every reference goes
        factor = ops.whitening_factor(gram.double(), jitter).factor
        del gram
        for t in members:
            WS = t.module.weight.detach().double() @ factor
            if keep_left:
                left[t.name], sv, _ = torch.linalg.svd(WS, full_matrices=False)
                out[t.name] = sv.square().cpu()
            else:
                out[t.name] = torch.linalg.svdvals(WS).square().cpu()
            del WS
        del factor
    return left


@torch.no_grad()
def whitened_spectra(source, targets, calibration: torch.Tensor, cfg, batch_size: int = 1,
                     progress: bool = True, group=None, probe: Probe | None = None) -> dict[str, torch.Tensor]:
    """{module name: σ² (descending, float64, CPU)} of W·S for every target. `source` holds its
    resident parts on entry and again on exit; in a group each rank runs its share of the
    windows, the Grams are summed, and every rank computes every spectrum. With `probe`, its
    scores and ranks are filled too (summed over the ranks' probe windows)."""
    group = group or Single()
    blocks = by_block(targets)
    share = calibration[group.share(calibration.shape[0])]
    hidden, args = replay.capture(source.model, source.layers, share, store=source.store, batch_size=batch_size)
    streams = Streams(hidden, args, batch_size)
    source.drop_resident()
    out: dict[str, torch.Tensor] = {}
    last = max(blocks)
    if probe is not None:
        probe.scores, probe.ranks = {}, {}
    try:
        for b, layer in visit(source, range(last + 1), "spectra", progress, leave=False):
            if b in blocks:
                inputs = [h.to(source.device, copy=True) for h in streams.hidden[:probe.windows]] if probe else None
                stats = block_stats(layer, b, blocks[b], streams, cfg, {"gram"}, source.device, group)
                left = _block_spectra(blocks[b], stats, cfg.calibration.jitter, out, keep_left=probe is not None)
                del stats
                if probe is not None:
                    _probe_block(layer, blocks[b], left, inputs, [z.to(source.device) for z in streams.hidden[:probe.windows]],
                                 streams.block_args[b], probe.fisher[b], probe)
                    del left, inputs
            elif b < last:
                streams.advance(layer, b, source.device)
    finally:
        source.onload_resident()
    if probe is not None and group.distributed:
        sums = {n: {"fisher": torch.tensor([v], dtype=torch.float64), "tokens": 0} for n, v in probe.scores.items()}
        group.all_reduce_stats(sums)
        probe.scores = {n: float(v["fisher"]) for n, v in sums.items()}
    return out
