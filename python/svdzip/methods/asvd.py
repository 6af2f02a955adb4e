"""ASVD (Yuan et al.): SVD of W·diag(s)^α with s = mean|x| (or max|x|) per input channel,
B = Σ½Vᵀ·diag(s)^−α."""

from . import register
from .weighting import channel_scale, truncate, truncate_many_prepared, truncator_of_prepared


def _prepare(stats, cfg):
    return channel_scale(stats["abs_max" if cfg.stat == "max" else "abs_mean"], cfg.alpha)


@register("asvd", stats=("abs_mean", "abs_max"), prepare=_prepare,
          truncator=truncator_of_prepared, many=truncate_many_prepared)
def decompose(W, prepared, rank, cfg):
    return truncate(W, rank, prepared)
