"""The loss allocation's knapsack: per-module kept ratios minimising the weighted dropped σ²
under a parameter budget, exactly (allocation/loss.py gives it the spectra and the weights)."""

from __future__ import annotations

import math

import torch

from .. import rank
from .prices import Price, in_parameters


def allocate_loss(spectra: dict[str, torch.Tensor], importance: dict[str, float],
                  shapes: dict[str, tuple[int, int]], budget: int, min_ratio: float = 0.0,
                  prices: dict[str, Price] | None = None, unit: str = "parameters") -> dict[str, float]:
    """Per-module kept ratio (1.0 = dense) minimising Σ_m w_m·Σ_{i>k_m} σ²_{m,i} under a budget
    in parameters (or in the unit of `prices`: stored bits for a byte budget, prices.py). Each
    rank unit of module m costs m+n parameters and gains w_m·σ²_k, decreasing in k, so taking
    units in order of gain per parameter is optimal (a knapsack whose items, per module, come in
    decreasing order of value): sort them once and take the longest prefix that fits. Storing a
    module dense (m·n, no loss) is one more item after its last useful rank kmax = ⌊mn/(m+n)⌋.
    Priced in bits, a rank's cost steps a little where scales' groups begin: the order uses the
    module's mean cost per rank (so a module's ranks stay in order) and the budget the exact steps. w_m = importance[m] (module_weights), or 1/Σσ² where none is given. Every module keeps
    at least rank_for_ratio(min_ratio) (and rank 1): the quadratic loss model sees a module's
    errors alone, so without a floor it drains the modules whose outputs matter least to
    near rank 1, where the errors of many such modules compound (SmolLM2, svd_llm 0.8: wiki
    129 without a floor, 113 with 0.4)."""
    keys, costs, owners, ranks = [], [], [], []  # per item: gain per unit of cost, cost, module, rank
    names = list(spectra)
    kmin = {nm: max(1, rank.rank_for_ratio(*shapes[nm], min_ratio)) if min_ratio > 0 else 1 for nm in names}
    price = {nm: prices[nm] if prices is not None else in_parameters(*shapes[nm]) for nm in names}
    for j, name in enumerate(names):
        s2, p = spectra[name].double(), price[name]
        w = importance.get(name, 1.0 / max(float(s2.sum()), 1e-300))
        kmax = len(p.ranks)
        gain = w * s2[:kmax] / (p.at_top / kmax)
        dense_cost = max(p.dense - p.at_top, 1)
        # the dense item may not come before the module's last rank unit: equal keys keep order
        to_dense = torch.minimum(gain.new_tensor([w * float(s2[kmax:].sum()) / dense_cost]), gain[-1:])
        keys.append(torch.cat([gain, to_dense]))
        costs.append(torch.cat([p.ranks, p.ranks.new_tensor([dense_cost])]))
        owners.append(torch.full((kmax + 1,), j, dtype=torch.int64))
        ranks.append(torch.arange(1, kmax + 2))
        keys[-1][:kmin[name]] = torch.inf  # the floor's ranks are taken first
    key, cost, owner, rk = (torch.cat(x) for x in (keys, costs, owners, ranks))
    floor = sum(int(price[nm].ranks[:kmin[nm]].sum()) for nm in names)
    if floor > budget:
        raise ValueError(f"budget of {budget} {unit} is below the floor of every module at rank "
                         f"max(1, rank at min_ratio={min_ratio}) ({floor} {unit})")
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
        kmax = len(price[name].ranks)
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
