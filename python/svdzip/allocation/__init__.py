"""How the parameter budget is spread over the targeted modules: one strategy per file.

    uniform       every module at the config's ratio             uniform.py
    last_blocks   only the last L blocks, the budget kept         last_blocks.py
    sensitivity   ASVD's trials, a perplexity threshold           sensitivity.py
    loss          whitened spectra priced by the loss, a knapsack loss.py, loss_knapsack.py

A new strategy is its file, its entry in STRATEGIES and its test (config.ALLOCATIONS lists the
names a config accepts: a test checks the two agree).
"""

from __future__ import annotations

from .base import Context, Strategy, budget, params_at_ratio
from .last_blocks import LastBlocks
from .loss import Loss, loss_importance, module_weights, probe_weights
from .loss_knapsack import allocate_loss, ratio_for_rank
from .sensitivity import Sensitivity, allocate, cache_key, sensitivity_table, trial_slice
from .uniform import Uniform

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Uniform, LastBlocks, Sensitivity, Loss)}


def strategy(config) -> Strategy:
    """The strategy a config names, or derives (config.strategy)."""
    return STRATEGIES[config.strategy]()


__all__ = ["Context", "Strategy", "STRATEGIES", "strategy", "budget", "params_at_ratio", "allocate",
           "allocate_loss", "ratio_for_rank", "cache_key", "sensitivity_table", "trial_slice",
           "loss_importance", "module_weights", "probe_weights", "Uniform", "LastBlocks", "Sensitivity", "Loss"]
