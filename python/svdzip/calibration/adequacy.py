"""Is the calibration set big enough for the layers it calibrates?

A Gram XᵀX of n inputs from T tokens has rank at most T: below the layer width the whitening
factor does not exist, every such module falls back to jittered Cholesky, and the result is
poor (SmolLM2 from 2 x 128 tokens: wiki 2,433 vs dense 27.7). That is said before the first
forward pass, with the numbers and the smallest calibration that avoids it.
"""

from __future__ import annotations

import math


def thin_calibration(windows: int, seqlen: int, widths: dict[str, int]) -> str | None:
    """A warning when windows x seqlen tokens are fewer than the widest layer's inputs
    (`widths`: module name -> in_features), else None."""
    if not widths:
        return None
    tokens = windows * seqlen
    name, widest = max(widths.items(), key=lambda kv: kv[1])
    short = sum(w > tokens for w in widths.values())
    if tokens >= widest:
        return None
    need = math.ceil(widest / seqlen)
    return (f"calibration has {tokens:,} tokens ({windows} windows x {seqlen}) but {short} of {len(widths)} "
            f"targeted layers take more inputs (widest: {name}, {widest:,}): their Grams are rank-deficient, "
            f"whitening falls back to jitter and the model will be poor. Use at least {need} windows of "
            f"{seqlen} tokens ({widest:,} tokens, the bare minimum); the evaluation protocol uses 32 x 512")
