"""How the parameter budget is spread over the targeted modules: one strategy per file.

    uniform       every module at the config's ratio             uniform.py
    last_blocks   only the last L blocks, the budget kept         last_blocks.py
    sensitivity   ASVD's trials, a perplexity threshold           sensitivity.py
    loss          whitened spectra priced by the loss, a knapsack loss.py, loss_knapsack.py

A new strategy is its file (a Strategy subclass with a name: every module here is imported and
its strategies found), its name in config_parts.ALLOCATIONS (the names a config accepts without
importing torch: a test checks the two agree) and its test. A byte budget prices ranks in stored
bits (prices.py).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Context, Strategy, budget, params_at_ratio
from .last_blocks import LastBlocks
from .loss import Loss, loss_importance, module_weights, probe_weights
from .loss_knapsack import allocate_loss, ratio_for_rank
from .sensitivity import Sensitivity, allocate, cache_key, sensitivity_table, trial_slice
from .uniform import Uniform



def _found() -> dict[str, type[Strategy]]:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    out, todo = {}, list(Strategy.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.name:
            out[cls.name] = cls
    return dict(sorted(out.items()))


STRATEGIES: dict[str, type[Strategy]] = _found()


def strategy(config) -> Strategy:
    """The strategy a config names, or derives (config.strategy)."""
    return STRATEGIES[config.strategy]()


__all__ = ["Context", "Strategy", "STRATEGIES", "strategy", "budget", "params_at_ratio", "allocate",
           "allocate_loss", "ratio_for_rank", "cache_key", "sensitivity_table", "trial_slice",
           "loss_importance", "module_weights", "probe_weights", "Uniform", "LastBlocks", "Sensitivity", "Loss"]
