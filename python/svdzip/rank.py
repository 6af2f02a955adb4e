"""Ratio <-> rank and per-module allocation, counted exactly in parameters.

A rank-k pair (A: m×k, B: k×n) holds k(m+n) parameters; it only saves memory while
k < mn/(m+n). For a kept fraction `ratio`, k = floor(ratio·mn/(m+n)).
"""

from __future__ import annotations

import fnmatch
import math


def rank_for_ratio(m: int, n: int, ratio: float) -> int:
    """Largest k whose factor pair keeps at most `ratio` of the m×n parameters (at least 1)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio = {ratio!r} must be in (0, 1]")
    return max(1, math.floor(ratio * m * n / (m + n)))


def lowrank_params(m: int, n: int, k: int) -> int:
    return k * (m + n)


def last_blocks_ratio(n_blocks: int, ratio: float, last: int) -> float:
    """Per-block kept ratio when only the last `last` of `n_blocks` equal blocks are compressed
    and the overall kept fraction must still be `ratio`: 1 − N(1 − ratio)/L."""
    if not 1 <= last <= n_blocks:
        raise ValueError(f"last_blocks = {last} must be in [1, {n_blocks}] (number of decoder blocks)")
    r = 1 - n_blocks * (1 - ratio) / last
    if r < 1e-6:  # 0 up to rounding: nothing would be left of those blocks
        need = math.floor(n_blocks * (1 - ratio) + 1e-9) + 1
        raise ValueError(f"ratio {ratio} cannot be met by compressing only the last {last} of "
                         f"{n_blocks} blocks (per-block ratio would be {r:.3f}); use at least {need}")
    return r


def match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def match_any(pattern: str, names) -> bool:
    """Does the glob `pattern` match at least one of `names`?"""
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def module_ratio(name: str, block: int, n_blocks: int, cfg) -> float | None:
    """Kept ratio for one targeted module, or None to leave it dense."""
    for pat, r in cfg.overrides.items():
        if fnmatch.fnmatchcase(name, pat):
            return None if r >= 1 else r
    if cfg.strategy in ("sensitivity", "loss"):  # before the plan: every target in
        return None if cfg.ratio >= 1 else cfg.ratio
    last = cfg.last_blocks_for(n_blocks)
    if last is not None:
        if block < n_blocks - last:
            return None
        return last_blocks_ratio(n_blocks, cfg.ratio, last)
    return None if cfg.ratio >= 1 else cfg.ratio
