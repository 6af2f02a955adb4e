"""Plain truncated SVD (data-free baseline): min ‖W − AB‖_F."""

from . import register
from .weighting import PLAIN, truncate, truncate_many, truncator


@register("svd", truncator=lambda W, p, cfg: truncator(W, PLAIN),
          many=lambda jobs, cfg: truncate_many([(W, k, PLAIN) for W, _, k in jobs]))
def decompose(W, prepared, rank, cfg):
    return truncate(W, rank, PLAIN)
