"""Every targeted module at the config's ratio (its overrides aside)."""

from __future__ import annotations

from .base import Strategy


class Uniform(Strategy):
    name = "uniform"
    fields = ("ratio", "overrides")
