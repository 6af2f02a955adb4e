"""Per-module rank allocation by sensitivity (ASVD), made fast.

For every targeted linear and candidate ratio: the perplexity of a short calibration slice
with only that layer truncated. Three things keep this cheap:
  - one SVD per matrix serves every candidate rank (Method.truncator truncates, never refactors);
  - the trial runs the model from the layer's block onward on cached hidden states (the blocks
    before it are dense, so their outputs are computed once), every trial of a run of blocks
    in one sweep over the blocks (pipeline/trials.py: one block's weights and statistics at a
    time, so it works out of core as in memory);
  - the table is cached on disk, keyed by model weights, method options and calibration tokens.
Then the ratios are chosen by a threshold on perplexity: every module takes its smallest
candidate ratio whose trial stays under the threshold, and a binary search finds the lowest
threshold whose total parameter count fits the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch

from . import rank
from .pipeline import trials
from .pipeline.group import Single

FORMAT = 1


def _slice(calibration: torch.Tensor, cfg) -> torch.Tensor:
    w, s = cfg.sensitivity_windows, cfg.sensitivity_seqlen
    if calibration.shape[1] < s:
        raise ValueError(f"sensitivity_seqlen = {s} is longer than the calibration windows "
                         f"({calibration.shape[1]} tokens)")
    return calibration[:w, :s]


def cache_key(cfg, tokens: torch.Tensor, weights) -> str:
    """Hash of what the table depends on: method options, tokens, and the targets' weights
    (`weights`: (module name, weight) pairs, as held in memory or read from a checkpoint)."""
    h = hashlib.sha256()
    # options the trials never read (the run's pipeline, the loss allocation's, the refinement's)
    # stay out of the key, so a table survives a change of them and a new such option
    opts = {k: v for k, v in cfg.to_dict().items()
            if k not in ("ratio", "overrides", "sequential", "last_blocks", "last_fraction", "allocation",
                         "objective", "compensation") and not k.startswith(("loss_", "refine_"))}
    h.update(json.dumps(opts, sort_keys=True).encode())
    h.update(tokens.cpu().numpy().tobytes())
    for name, w in weights:
        h.update(name.encode())
        h.update(w.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _cache_file(key: str) -> Path:
    from .models import cache_dir

    return cache_dir() / "sensitivity" / f"{key}.json"


def _read_cache(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # absent or damaged: recompute (and overwrite)
    return d if d.get("format") == FORMAT else None


def _write_cache(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def sensitivity_table(source, targets, stats: dict | None, cfg, method, calibration: torch.Tensor,
                      kinds, batch_size: int = 1, progress: bool = True,
                      trial_memory: int = trials.DEFAULT_TRIAL_MEMORY, group=None) -> dict:
    """{"dense_ppl": p, "ppl": {module: {ratio: ppl}}, "seconds": s, "cached": bool}, from the
    cache or from sweeps over `source` (pipeline/trials.py). In a distributed group rank 0
    reads and writes the cache and every rank gets its answer."""
    group = group or Single()
    tokens = _slice(calibration, cfg)
    path = _cache_file(cache_key(cfg, tokens, ((t.name, source.weight(t)) for t in targets)))
    cached = _read_cache(path) if group.rank == 0 else None
    if cached is not None and not set(cached["ppl"]) >= {t.name for t in targets}:
        cached = None
    cached = group.broadcast_object(cached)
    if cached is not None:
        cached["cached"] = True
        cached["ppl"] = {n: {float(r): p for r, p in v.items()} for n, v in cached["ppl"].items()}
        return cached
    out = trials.sweep_table(source, targets, cfg, method, calibration, tokens, kinds, stats,
                             batch_size, progress, trial_memory, group)
    out = {"format": FORMAT, **out, "tokens": list(tokens.shape)}
    table = out["ppl"]
    if group.rank == 0:
        _write_cache(path, {**out, "ppl": {n: {str(r): p for r, p in v.items()} for n, v in table.items()}})
    out["cached"] = False
    return out


def allocate_by_sensitivity(source, targets, stats: dict | None, config, method, calibration,
                            kinds, batch_size: int = 1, progress: bool = True,
                            trial_memory: int = trials.DEFAULT_TRIAL_MEMORY, group=None):
    """(config with per-module ratios as exact-name overrides, the report's allocation record).
    Modules the user overrode keep their ratio and count against the budget."""
    if calibration is None:
        raise ValueError("allocation='sensitivity' needs calibration token ids for its trials")
    if config.objective == "compensated":  # trials run on the dense model, where X̃ = X: plain
        trial_cfg = dataclasses.replace(config, objective="plain")
        kinds = frozenset(kinds) - {"cross"}
    else:
        trial_cfg = config
    user = {t.name for t in targets if rank.match(t.name, config.overrides)}
    free = [t for t in targets if t.name not in user]
    table = sensitivity_table(source, free, stats, trial_cfg, method, calibration, kinds, batch_size,
                              progress, trial_memory, group)
    shapes = {t.name: t.shape for t in targets}
    budget = math.floor(config.ratio * sum(m * n for m, n in shapes.values()))
    budget -= sum(_params(shapes[t.name], t.ratio) for t in targets if t.name in user)
    ratios = allocate({t.name: table["ppl"][t.name] for t in free}, shapes, budget)
    new = dataclasses.replace(config, overrides={**config.overrides, **ratios})
    info = {"kind": "sensitivity", "ratios": ratios, "dense_slice_ppl": table["dense_ppl"],
            "trial_seconds": table["seconds"], "cached": table["cached"], "budget_params": budget,
            "sweeps": table.get("sweeps")}
    return new, info


def _params(shape, r: float) -> int:
    m, n = shape
    return m * n if r >= 1 else rank.lowrank_params(m, n, rank.rank_for_ratio(m, n, r))


def allocate(table: dict[str, dict[float, float]], shapes: dict[str, tuple[int, int]], budget: int) -> dict[str, float]:
    """Per-module ratio (1.0 = dense) under a parameter budget: every module takes its smallest
    candidate ratio whose trial perplexity is <= a threshold; the threshold is the lowest of
    the trial perplexities (binary search, total parameters fall as it rises) that fits."""
    def choose(th: float) -> dict[str, float]:
        return {n: min([r for r, p in table[n].items() if p <= th], default=1.0) for n in table}

    def total(choice):
        return sum(_params(shapes[n], r) for n, r in choice.items())

    levels = sorted({p for v in table.values() for p in v.values()})
    if total(choose(levels[-1])) > budget:
        smallest = min(min(v) for v in table.values())
        raise ValueError(f"budget of {budget} parameters cannot be met even with every module at "
                         f"its smallest candidate ratio {smallest}; add smaller sensitivity_ratios")
    lo, hi = 0, len(levels) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if total(choose(levels[mid])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return choose(levels[lo])


# ---- allocation="loss": from the truncation losses, without trials -------------------------

def loss_importance(model, targets, calibration: torch.Tensor, cfg, progress: bool = True, group=None) -> dict:
    """Per module, F̄ = the mean squared gradient of the LM loss w.r.t. its outputs (FWSVD's row
    Fisher sums over the first `loss_windows` calibration windows, one backward each): to second
    order ΔL ≈ ½·F̄·‖ΔY‖² for an error ΔY spread over the outputs. {} for "relative", which
    needs no backward. For "probe": {block: Σ (∂L/∂z)² per channel of the block's output z}."""
    if cfg.loss_importance == "relative":
        return {}
    group = group or Single()
    windows = calibration[:cfg.loss_windows]
    if cfg.loss_importance == "probe":
        from .calibration.fisher import block_output_fisher

        with group.agree("computing the loss allocation's block-output Fisher"):
            acc = block_output_fisher(model, windows[group.share(windows.shape[0])], progress)
        sums = {b: {"fisher": f, "tokens": 0} for b, f in sorted(acc.items())}
        group.all_reduce_stats(sums)
        return {b: v["fisher"] for b, v in sums.items()}
    from .calibration.fisher import row_fisher

    with group.agree("computing the loss allocation's Fisher importances"):
        stats = row_fisher(model, targets, windows[group.share(windows.shape[0])], progress)
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


def allocate_loss(spectra: dict[str, torch.Tensor], importance: dict[str, float],
                  shapes: dict[str, tuple[int, int]], budget: int, min_ratio: float = 0.0) -> dict[str, float]:
    """Per-module kept ratio (1.0 = dense) minimising Σ_m w_m·Σ_{i>k_m} σ²_{m,i} under a parameter
    budget. Each rank unit of module m costs m+n parameters and gains w_m·σ²_k, decreasing in k,
    so taking units in order of gain per parameter is optimal (a knapsack whose items, per
    module, come in decreasing order of value): sort them once and take the longest prefix
    that fits. Storing a module dense (m·n, no loss) is one more item after its last useful
    rank kmax = ⌊mn/(m+n)⌋. w_m = importance[m] (module_weights), or 1/Σσ² where none is given. Every module keeps
    at least rank_for_ratio(min_ratio) (and rank 1): the quadratic loss model sees a module's
    errors alone, so without a floor it drains the modules whose outputs matter least to
    near rank 1, where the errors of many such modules compound (SmolLM2, svd_llm 0.8: wiki
    129 without a floor, 113 with 0.4)."""
    keys, costs, owners, ranks = [], [], [], []  # per item: gain per parameter, cost, module, rank
    names = list(spectra)
    kmin = {nm: max(1, rank.rank_for_ratio(*shapes[nm], min_ratio)) if min_ratio > 0 else 1 for nm in names}
    for j, name in enumerate(names):
        m, n = shapes[name]
        s2 = spectra[name].double()
        w = importance.get(name, 1.0 / max(float(s2.sum()), 1e-300))
        kmax = max(1, (m * n) // (m + n))
        unit = w * s2[:kmax] / (m + n)
        dense_cost = max(m * n - kmax * (m + n), 1)
        # the dense item may not come before the module's last rank unit: equal keys keep order
        to_dense = torch.minimum(unit.new_tensor([w * float(s2[kmax:].sum()) / dense_cost]), unit[-1:])
        keys.append(torch.cat([unit, to_dense]))
        costs.append(torch.tensor([m + n] * kmax + [dense_cost], dtype=torch.int64))
        owners.append(torch.full((kmax + 1,), j, dtype=torch.int64))
        ranks.append(torch.arange(1, kmax + 2))
        keys[-1][:kmin[name]] = torch.inf  # the floor's ranks are taken first
    key, cost, owner, rk = (torch.cat(x) for x in (keys, costs, owners, ranks))
    floor = sum(kmin[nm] * sum(shapes[nm]) for nm in names)
    if floor > budget:
        raise ValueError(f"budget of {budget} parameters is below the floor of every module at rank "
                         f"max(1, rank at min_ratio={min_ratio}) ({floor} parameters)")
    order = torch.argsort(key, descending=True, stable=True)
    spent = torch.cumsum(cost[order], 0)
    n_prefix = int((spent <= budget).sum())
    chosen = order[:n_prefix]
    best = torch.zeros(len(names), dtype=torch.int64)
    best.scatter_reduce_(0, owner[chosen], rk[chosen], reduce="amax")
    # the prefix stops at the first item that does not fit (often a whole module going dense):
    # the later, cheaper items that still fit are taken, each module's in rank order
    left = budget - (int(spent[n_prefix - 1]) if n_prefix else 0)
    rest = order[n_prefix:]
    top = best.tolist()
    for j, c, k in zip(owner[rest].tolist(), cost[rest].tolist(), rk[rest].tolist()):
        if c <= left and k == top[j] + 1:
            top[j] = k
            left -= c
    best = torch.tensor(top)
    ratios = {}
    for j, name in enumerate(names):
        m, n = shapes[name]
        kmax = max(1, (m * n) // (m + n))
        k = int(best[j])
        ratios[name] = 1.0 if k > kmax else ratio_for_rank(m, n, k)
    return ratios


def ratio_for_rank(m: int, n: int, k: int) -> float:
    """The smallest ratio whose rank_for_ratio is k (so an override gives exactly rank k)."""
    if not 1 <= k <= rank.rank_for_ratio(m, n, 1.0):
        raise ValueError(f"rank {k} is outside [1, {rank.rank_for_ratio(m, n, 1.0)}] for a {m}x{n} matrix")
    r = min(1.0, k * (m + n) / (m * n))
    while rank.rank_for_ratio(m, n, r) < k:
        r = min(1.0, math.nextafter(r, 2.0))
    return r


def allocate_by_loss(source, model, targets, config, calibration, batch_size: int = 1,
                     progress: bool = True, group=None):
    """(config with per-module ratios as exact-name overrides, the report's allocation record):
    one one-shot pass for the whitened spectra (pipeline/spectra.py), the Fisher importances
    (one backward per `loss_windows` window), then allocate_loss. Modules the user overrode
    keep their ratio and count against the budget."""
    import time

    from .pipeline.spectra import Probe, whitened_spectra

    if calibration is None:
        raise ValueError("allocation='loss' needs calibration token ids for the module spectra")
    t0 = time.perf_counter()
    user = {t.name for t in targets if rank.match(t.name, config.overrides)}
    free = [t for t in targets if t.name not in user]
    shapes = {t.name: t.shape for t in targets}
    budget = math.floor(config.ratio * sum(m * n for m, n in shapes.values()))
    budget -= sum(_params(shapes[t.name], t.ratio) for t in targets if t.name in user)
    importance = loss_importance(model, free, calibration, config, progress, group)
    t1 = time.perf_counter()
    probe = Probe(importance, config.loss_probe_windows, config.loss_probe_ratio) \
        if config.loss_importance == "probe" else None
    spectra = whitened_spectra(source, free, calibration, config, batch_size, progress, group, probe)
    if probe is not None:
        weights = probe_weights(probe.scores, probe.ranks, spectra)
    else:
        weights = module_weights(config.loss_importance, importance, spectra, {t.name: t.block for t in free})
    ratios = allocate_loss(spectra, weights, {t.name: t.shape for t in free}, budget, config.loss_min_ratio)
    new = dataclasses.replace(config, overrides={**config.overrides, **ratios})
    info = {"kind": "loss", "importance": config.loss_importance, "min_ratio": config.loss_min_ratio, "ratios": ratios,
            "budget_params": budget, "fisher_seconds": t1 - t0, "spectra_seconds": time.perf_counter() - t1}
    return new, info
