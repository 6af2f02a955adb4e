"""Per-module rank allocation by sensitivity (ASVD), made fast.

For every targeted linear and candidate ratio: the perplexity of a short calibration slice
with only that layer truncated. Three things keep this cheap:
  - one SVD per matrix serves every candidate rank (Method.truncator truncates, never refactors);
  - the trial runs the model from the layer's block onward on cached hidden states (the blocks
    before it are dense, so their outputs are computed once);
  - the table is cached on disk, keyed by model weights, method options and calibration tokens.
Then the ratios are chosen by a threshold on perplexity: every module takes its smallest
candidate ratio whose trial stays under the threshold, and a binary search finds the lowest
threshold whose total parameter count fits the budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import rank
from .pipeline import replay

FORMAT = 1


def _slice(calibration: torch.Tensor, cfg) -> torch.Tensor:
    w, s = cfg.sensitivity_windows, cfg.sensitivity_seqlen
    if calibration.shape[1] < s:
        raise ValueError(f"sensitivity_seqlen = {s} is longer than the calibration windows "
                         f"({calibration.shape[1]} tokens)")
    return calibration[:w, :s]


def cache_key(model, cfg, tokens: torch.Tensor, targets) -> str:
    """Hash of what the table depends on: weights of the targets, method options, tokens."""
    h = hashlib.sha256()
    opts = {k: v for k, v in cfg.to_dict().items()
            if k not in ("ratio", "overrides", "sequential", "last_blocks", "last_fraction", "allocation")}
    h.update(json.dumps(opts, sort_keys=True).encode())
    h.update(tokens.cpu().numpy().tobytes())
    for t in targets:
        h.update(t.name.encode())
        h.update(t.module.weight.detach().float().cpu().numpy().tobytes())
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


@torch.no_grad()
def _ppl_from(layers, block_args, head, start: int, hidden: list, tokens: torch.Tensor) -> float:
    h = hidden
    for i in range(start, len(layers)):
        h = replay.run_block(layers[i], h, block_args[i])
    nll, count = 0.0, 0
    for j, hj in enumerate(h):
        logits = head(hj)[0, :-1].float()
        labels = tokens[j, 1:].to(logits.device)
        nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += labels.numel()
    return math.exp(nll / count)


@torch.no_grad()
def sensitivity_table(model, layers, targets, stats: dict, cfg, method, calibration: torch.Tensor,
                      progress: bool = True) -> dict:
    """{"dense_ppl": p, "ppl": {module: {ratio: ppl}}, "seconds": s, "cached": bool}."""
    tokens = _slice(calibration, cfg)
    path = _cache_file(cache_key(model, cfg, tokens, targets))
    cached = _read_cache(path)
    if cached is not None and set(cached["ppl"]) >= {t.name for t in targets}:
        cached["cached"] = True
        cached["ppl"] = {n: {float(r): p for r, p in v.items()} for n, v in cached["ppl"].items()}
        return cached
    t0 = time.perf_counter()
    hidden, block_args = replay.capture(model, layers, tokens)
    head = replay.head(model)
    dense = _ppl_from(layers, block_args, head, 0, hidden, tokens)
    by_block: dict[int, list] = {}
    for t in targets:
        by_block.setdefault(t.block, []).append(t)
    table: dict[str, dict[float, float]] = {}
    prepared: dict[str, object] = {}
    bar = tqdm(total=len(targets) * len(cfg.sensitivity_ratios), desc="sensitivity trials",
               disable=not progress, leave=False)
    for b in range(len(layers)):
        for t in by_block.get(b, []):
            st = stats.get(t.name, {})
            key = st.get("leader", t.name)
            if key not in prepared:
                prepared[key] = method.prepare(st, cfg)
            weight = t.module.weight
            original = weight.detach().clone()
            trunc = method.truncator(original.double(), prepared[key], cfg)
            m, n = original.shape
            table[t.name] = {}
            try:
                for r in cfg.sensitivity_ratios:
                    A, B = trunc(rank.rank_for_ratio(m, n, r))
                    weight.copy_((A @ B).to(weight.dtype))  # same product as the low-rank pair
                    table[t.name][r] = _ppl_from(layers, block_args, head, b, hidden, tokens)
                    bar.update()
            finally:
                weight.copy_(original)
        if b + 1 < len(layers):
            hidden = replay.run_block(layers[b], hidden, block_args[b])
    bar.close()
    out = {"format": FORMAT, "dense_ppl": dense, "ppl": table,
           "seconds": time.perf_counter() - t0, "tokens": list(tokens.shape)}
    _write_cache(path, {**out, "ppl": {n: {str(r): p for r, p in v.items()} for n, v in table.items()}})
    out["cached"] = False
    return out


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
