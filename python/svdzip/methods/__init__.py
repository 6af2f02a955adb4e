"""Decomposition methods: pure functions of (W, statistics, rank) -> (A, B).

Each method is registered with the statistics it needs; `prepare` turns a module's raw
statistics into a weighting (once per shared input), `decompose` does the math.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from ..config import MethodRegistry


@dataclass(frozen=True)
class Method:
    name: str
    stats: frozenset[str]        # "gram", "abs_mean", "abs_max", "fisher"
    prepare: Callable             # (stats: dict, cfg) -> prepared (shared by modules with one input)
    decompose: Callable           # (W, prepared, rank, cfg) -> (A, B)
    truncator: Callable           # (W, prepared, cfg) -> (rank -> (A, B)), sharing SVDs across ranks
    decompose_many: Callable      # ([(W, prepared, rank)], cfg) -> [(A, B)], SVDs batched by shape


METHODS: MethodRegistry = MethodRegistry()  # 'SVD-LLM' and 'svd-llm' find 'svd_llm' 


def register(name: str, stats=(), prepare=None, truncator=None, many=None):
    """`truncator` lets rank-allocation trials reuse one SVD for every candidate rank; without
    one, each rank is decomposed from scratch. `many` decomposes a block's modules together
    (same-shaped SVDs in one batched call); without it they are decomposed one by one."""
    def deco(fn):
        trunc = truncator or (lambda W, p, cfg: (lambda k: fn(W, p, k, cfg)))
        each = many or (lambda jobs, cfg: [fn(W, p, k, cfg) for W, p, k in jobs])
        METHODS[name] = Method(name, frozenset(stats), prepare or (lambda s, c: None), fn, trunc, each)
        return fn
    return deco


_STAGE_STATS = {"plain": set(), "whitened": {"gram"}, "whitened_eigen": {"gram"},
                "asvd": {"abs_mean"}}


def required_stats(cfg) -> frozenset[str]:
    """Statistics the pipeline must collect for this config (two-stage methods: per stage)."""
    need = set(get(cfg.method).stats)
    for stage in ("stage1_weighting", "stage2"):
        if hasattr(cfg, stage):
            need |= _STAGE_STATS[getattr(cfg, stage)]
    if cfg.objective.kind == "compensated":
        need |= {"gram", "cross"}  # G̃ and C = X·X̃ᵀ (methods/compensated.py)
    if cfg.output.base_method == "gptq":
        need |= {"gram"}  # GPTQ rounds the base on its layer's input Gram
    return frozenset(need)


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _import_all() -> None:
    """Each module of this package registers its method when imported: a new method is its file
    and its config class (config_methods.py), nothing to list here."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_all()
