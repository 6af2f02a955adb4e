"""Only the last L decoder blocks compressed, at the per-block ratio that keeps the overall
budget (ResSVD's scheme; rank.last_blocks_ratio): the ratios follow from the config alone."""

from __future__ import annotations

from .base import Strategy


class LastBlocks(Strategy):
    name = "last_blocks"
    fields = ("ratio", "overrides", "last_blocks", "last_fraction")
