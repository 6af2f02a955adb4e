"""ASVD's per-module allocation by sensitivity trials, made fast.

For every targeted linear and candidate ratio: the perplexity of a short calibration slice
with only that layer truncated. Three things keep this cheap:
  - one SVD per matrix serves every candidate rank (Method.truncator truncates, never refactors);
  - the trial runs the model from the layer's block onward on cached hidden states (the blocks
    before it are dense, so their outputs are computed once), every trial of a run of blocks
    in one sweep over the blocks (pipeline/trials.py: one block's weights and statistics at a
    time, so it works out of core as in memory);
  - the table is cached on disk, keyed by the fields the trials read, the calibration tokens
    and the targets' weights.
Then the ratios are chosen by a threshold on perplexity: every module takes its smallest
candidate ratio whose trial stays under the threshold, and a binary search finds the lowest
threshold whose total parameter count fits the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from ..paths import cache_dir
from ..pipeline import trials
from ..pipeline.group import Single
from .base import Context, Strategy, budget, kept_line, params_at_ratio

FORMAT = 1
# what the trials read besides the method's own options (flat option names); anything else
# (allocation, objective, refinement, output, ...) may change without invalidating the table.
# KEY_FORMAT counts changes to how the key is built (2: nested configs, stage 1's effective weighting).
KEY_FORMAT = 2
TRIAL_FIELDS = ("method", "targets", "ignore", "jitter", "gram_products",
                "sensitivity_ratios", "sensitivity_windows", "sensitivity_seqlen")
NOT_READ_BY_TRIALS = ("last_fraction",)  # a method option that only places the blocks


def trial_slice(calibration: torch.Tensor, cfg) -> torch.Tensor:
    w, s = cfg.allocation.sensitivity_windows, cfg.allocation.sensitivity_seqlen
    if calibration.shape[1] < s:
        raise ValueError(f"sensitivity_seqlen = {s} is longer than the calibration windows "
                         f"({calibration.shape[1]} tokens)")
    return calibration[:w, :s]


def _key_fields(cfg) -> dict:
    flat = cfg.flat()
    if hasattr(cfg, "stage1_weighting"):  # what stage 1 runs, however it was named
        flat["stage1"] = cfg.stage1_weighting
    own = [k for k in cfg.method_options() if k not in NOT_READ_BY_TRIALS]
    return {"key_format": KEY_FORMAT, **{k: flat[k] for k in (*TRIAL_FIELDS, *own)}}


def cache_key(cfg, tokens: torch.Tensor, weights) -> str:
    """Hash of what the table depends on: the fields the trials read, the tokens, and the
    targets' weights (`weights`: (module name, weight) pairs, held or read from a checkpoint)."""
    h = hashlib.sha256()
    h.update(json.dumps(_key_fields(cfg), sort_keys=True).encode())
    h.update(tokens.cpu().numpy().tobytes())
    for name, w in weights:
        h.update(name.encode())
        h.update(w.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def cache_file(key: str) -> Path:
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
    tokens = trial_slice(calibration, cfg)
    path = cache_file(cache_key(cfg, tokens, ((t.name, source.weight(t)) for t in targets)))
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


def allocate(table: dict[str, dict[float, float]], shapes: dict[str, tuple[int, int]], budget: int) -> dict[str, float]:
    """Per-module ratio (1.0 = dense) under a parameter budget: every module takes its smallest
    candidate ratio whose trial perplexity is <= a threshold; the threshold is the lowest of
    the trial perplexities (binary search, total parameters fall as it rises) that fits."""
    def choose(th: float) -> dict[str, float]:
        return {n: min([r for r, p in table[n].items() if p <= th], default=1.0) for n in table}

    def total(choice):
        return sum(params_at_ratio(shapes[n], r) for n, r in choice.items())

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


class Sensitivity(Strategy):
    name = "sensitivity"
    fields = ("ratio", "overrides", "sensitivity_ratios", "sensitivity_windows", "sensitivity_seqlen")
    remembered = True

    def plan(self, ctx: Context):
        """Modules the user overrode keep their ratio and count against the budget."""
        config, kinds = ctx.config, ctx.kinds
        if ctx.calibration is None:
            raise ValueError("allocation='sensitivity' needs calibration token ids for its trials")
        if config.objective.kind == "compensated":  # trials run on the dense model, where X̃ = X: plain
            config = dataclasses.replace(config, objective=dataclasses.replace(config.objective, kind="plain"))
            kinds = frozenset(kinds) - {"cross"}
        left, free = budget(ctx)
        table = sensitivity_table(ctx.source, free, ctx.stats, config, ctx.method, ctx.calibration, kinds,
                                  ctx.batch_size, ctx.progress, ctx.trial_memory, ctx.group)
        ratios = allocate({t.name: table["ppl"][t.name] for t in free}, {t.name: t.shape for t in ctx.targets}, left)
        info = {"kind": "sensitivity", "ratios": ratios, "dense_slice_ppl": table["dense_ppl"],
                "trial_seconds": table["seconds"], "cached": table["cached"], "budget_params": left,
                "sweeps": table.get("sweeps")}
        return ratios, info

    def summary(self, info: dict) -> str:
        cost = "trials " + ("cached" if info["cached"] else f"{info['trial_seconds']:.1f} s")
        return f"allocation sensitivity: {kept_line(info)}, {cost}"

    def extra_memory(self, config, trial_memory: int) -> int:
        return trial_memory
