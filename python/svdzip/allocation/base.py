"""What every allocation strategy shares: the context it plans in, and the budget prologue.

A strategy answers one question, "which kept ratio for each targeted module?", from a
`Context` (where the weights are, the calibration, the group). `plan(ctx)` returns the ratios
of the modules it decides ({} when the config's own ratio / last-blocks rule decides) and the
record that goes into the report; `summary(info)` is that record's line in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from .. import rank
from ..pipeline.group import Single
from ..pipeline.trials import DEFAULT_TRIAL_MEMORY


@dataclass
class Context:
    source: Any                      # pipeline/source.py: InMemory or Offloaded
    targets: list                    # pipeline/walk.py Targets at the config's own ratios
    config: Any
    method: Any
    kinds: frozenset
    calibration: torch.Tensor | None
    stats: dict | None = None        # statistics already collected (FWSVD's Fisher sums)
    batch_size: int = 1
    progress: bool = True
    trial_memory: int = DEFAULT_TRIAL_MEMORY
    group: Any = field(default_factory=Single)
    scratch: Callable[[str], Path | None] | None = None  # sink.scratch: where a block-wise pass spills


def params_at_ratio(shape, r: float) -> int:
    """Parameters of an m×n module kept at ratio r (dense at r >= 1)."""
    m, n = shape
    return m * n if r >= 1 else rank.lowrank_params(m, n, rank.rank_for_ratio(m, n, r))


def budget(ctx: Context):
    """(parameter budget left for the modules the strategy decides, those modules): the user's
    overrides keep their ratio and count against ratio x the targets' parameters."""
    config, targets = ctx.config, ctx.targets
    user = {t.name for t in targets if rank.match(t.name, config.overrides)}
    free = [t for t in targets if t.name not in user]
    total = math.floor(config.ratio * sum(t.shape[0] * t.shape[1] for t in targets))
    total -= sum(params_at_ratio(t.shape, t.ratio) for t in targets if t.name in user)
    return total, free


class Strategy:
    """One way of spreading the budget (subclasses: one file each)."""

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()   # the config fields this strategy reads
    remembered: ClassVar[bool] = False       # an out-of-core run keeps its plan for a resume

    def plan(self, ctx: Context) -> tuple[dict[str, float], dict | None]:
        return {}, None

    def summary(self, info: dict) -> str:
        return ""

    def extra_memory(self, config, trial_memory: int) -> int:
        """Bytes its pass holds beyond the block loop's own (pipeline/budget.py)."""
        return 0


def kept_line(info: dict) -> str:
    kept = sorted(info["ratios"].values())
    return f"ratios {kept[0]}..{kept[-1]} ({sum(r >= 1 for r in kept)} modules left dense)" if kept else "no ratios"
