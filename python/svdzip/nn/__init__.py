from .lowrank_linear import LowRankLinear

__all__ = ["LowRankLinear"]
