"""allocation="loss": each module's ratios priced by what its truncation costs the loss,
without trials.

A module's whitened spectrum gives its output error at every rank at once
(pipeline/spectra.py); a weight per module turns output error into loss (`loss_importance`:
"probe", "block", "fisher" or "relative"), and the exact knapsack of loss_knapsack.py spends
the budget. The Fisher passes come from the source: the whole model's backward in memory, a
block-wise backward out of core (pipeline/fisher.py), with the same sums.
"""

from __future__ import annotations

import time

import torch

from ..pipeline.group import Single
from ..pipeline.spectra import Probe, whitened_spectra
from .base import Context, Strategy, budget, kept_line
from .loss_knapsack import allocate_loss
from .prices import bits_budget


def loss_importance(source, targets, calibration: torch.Tensor, cfg, progress: bool = True, group=None,
                    scratch=None) -> dict:
    """Per module, F̄ = the mean squared gradient of the LM loss w.r.t. its outputs (FWSVD's row
    Fisher sums over the first `loss_windows` calibration windows, one backward each): to second
    order ΔL ≈ ½·F̄·‖ΔY‖² for an error ΔY spread over the outputs. {} for "relative", which
    needs no backward. For "probe": {block: Σ (∂L/∂z)² per channel of the block's output z}."""
    if cfg.allocation.loss_importance == "relative":
        return {}
    group = group or Single()
    windows = calibration[:cfg.allocation.loss_windows]
    mine = windows[group.share(windows.shape[0])]
    spill = None if scratch is None else scratch("loss-fisher-spill")
    if cfg.allocation.loss_importance == "probe":
        with group.agree("computing the loss allocation's block-output Fisher"):
            acc = source.block_output_fisher({t.block for t in targets}, mine, spill, progress)
        sums = {b: {"fisher": f, "tokens": 0} for b, f in sorted(acc.items())}
        group.all_reduce_stats(sums)
        return {b: v["fisher"] for b, v in sums.items()}
    with group.agree("computing the loss allocation's Fisher importances"):
        stats = source.row_fisher(targets, mine, spill, progress)
    group.all_reduce_stats(stats)
    return {n: float(st["fisher"].mean()) for n, st in stats.items()}


def probe_weights(scores: dict[str, float], ranks: dict[str, int], spectra: dict[str, torch.Tensor]) -> dict[str, float]:
    """"probe": w_m = the probe's loss estimate over the output error it measured, i.e. the loss
    per unit of dropped σ² (pipeline/spectra.py Probe), so every rank of the module is priced by
    what its truncation did at the block's output. A module whose probe dropped nothing (exactly
    low rank) gets w = 0: its truncation there costs nothing."""
    out = {}
    for n, s2 in spectra.items():
        dropped = float(s2[ranks[n]:].sum())
        out[n] = scores[n] / dropped if dropped > 0 else 0.0
    return out


def module_weights(kind: str, fisher: dict[str, float], spectra: dict[str, torch.Tensor],
                   blocks: dict[str, int]) -> dict[str, float]:
    """The weight w_m of each module's dropped σ² (its output error ‖ΔY‖²) in allocate_loss.
    "fisher": w = F̄_m. "relative": w = 1/‖W·X‖² (= 1/Σσ²), every module's relative error alike.
    "block": w = E_b/‖W·X‖², with E_b the mean over block b's modules of F̄·‖W·X‖² (the loss
    the module's whole output is worth): relative errors, scaled by how much their block
    matters. F̄ alone ranks modules inside a block badly (q/k's outputs reach the loss through
    the softmax, and their F̄ is 10-100x below v's, so "fisher" drains them: SmolLM2 svd_llm 0.8
    one-shot, floor 0.4: wiki 156 vs 113 relative vs 82 block)."""
    total = {n: max(float(s.sum()), 1e-300) for n, s in spectra.items()}
    if kind == "relative":
        return {n: 1.0 / t for n, t in total.items()}
    if kind == "fisher":
        return {n: fisher[n] for n in spectra}
    per_block: dict[int, list[float]] = {}
    for n in spectra:
        per_block.setdefault(blocks[n], []).append(fisher[n] * total[n])
    scale = {b: sum(v) / len(v) for b, v in per_block.items()}
    return {n: scale[blocks[n]] / total[n] for n in spectra}


def _probe_windows(ctx: Context) -> int:
    """How many of this rank's windows are among the first `loss_probe_windows` of the whole
    calibration (each rank probes on the start of its own share): in a group the ranks' probe
    scores then sum to the one-process score."""
    share = ctx.group.share(ctx.calibration.shape[0])
    return max(0, min(share.stop, ctx.config.allocation.loss_probe_windows) - share.start)


class Loss(Strategy):
    name = "loss"
    fields = ("ratio", "overrides", "bits", "factor_bits", "group_size", "jitter", "loss_importance", "loss_windows", "loss_probe_windows",
              "loss_probe_ratio", "loss_min_ratio")
    remembered = True

    def plan(self, ctx: Context):
        """One one-shot pass for the whitened spectra, the Fisher importances (one backward per
        `loss_windows` window), then allocate_loss. Modules the user overrode keep their ratio
        and count against the budget."""
        config = ctx.config
        if ctx.calibration is None:
            raise ValueError("allocation='loss' needs calibration token ids for the module spectra")
        t0 = time.perf_counter()
        left, free = budget(ctx)
        prices, unit = None, "parameters"
        if config.output.bits is not None:  # a byte budget: ranks and dense modules priced in stored bits
            left, prices = bits_budget(free, config)
            unit = "bits"
        importance = loss_importance(ctx.source, free, ctx.calibration, config, ctx.progress, ctx.group, ctx.scratch)
        t1 = time.perf_counter()
        probe = Probe(importance, _probe_windows(ctx), config.allocation.loss_probe_ratio) \
            if config.allocation.loss_importance == "probe" else None
        spectra = whitened_spectra(ctx.source, free, ctx.calibration, config, ctx.batch_size, ctx.progress,
                                   ctx.group, probe)
        if probe is not None:
            weights = probe_weights(probe.scores, probe.ranks, spectra)
        else:
            weights = module_weights(config.allocation.loss_importance, importance, spectra, {t.name: t.block for t in free})
        ratios = allocate_loss(spectra, weights, {t.name: t.shape for t in free}, left, config.allocation.loss_min_ratio,
                               prices, unit)
        info = {"kind": "loss", "importance": config.allocation.loss_importance, "min_ratio": config.allocation.loss_min_ratio,
                "ratios": ratios, f"budget_{'params' if prices is None else 'bits'}": left, "fisher_seconds": t1 - t0,
                "spectra_seconds": time.perf_counter() - t1}
        return ratios, info

    def summary(self, info: dict) -> str:
        budget = f", budget {info['budget_bits']:,} bits" if "budget_bits" in info else ""
        return (f"allocation loss{budget}: {kept_line(info)}, Fisher {info['fisher_seconds']:.1f} s, "
                f"spectra {info['spectra_seconds']:.1f} s")
