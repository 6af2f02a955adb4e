"""NSVD (nested activation-aware decomposition): stage 1 whitened at k1 = round(f·k)
(NSVD-I: Cholesky factor; NSVD-II: eigen factor of the Gram), stage 2 a plain SVD of the
residual at k − k1. A = [A1 A2], B = [B1; B2]."""

from . import register
from .weighting import for_stage, two_stage_many, two_stage_truncator


def split(rank: int, fraction: float) -> int:
    return max(1, min(rank, round(fraction * rank)))


def prepare(stats, cfg):
    return for_stage(cfg.stage1_weighting, stats, cfg), for_stage(cfg.stage2, stats, cfg)


def stage_truncator(W, prepared, cfg):
    return two_stage_truncator(W, *prepared, lambda k: split(k, cfg.first_fraction))


def decompose_many(jobs, cfg):
    """Both stages' SVDs batched by shape across the jobs (W, (w1, w2), rank)."""
    return two_stage_many([(W, k, split(k, cfg.first_fraction), *p) for W, p, k in jobs])


@register("nsvd", prepare=prepare, truncator=stage_truncator, many=decompose_many)  # stats follow the stage weightings
def decompose(W, prepared, rank, cfg):
    return decompose_many([(W, prepared, rank)], cfg)[0]
