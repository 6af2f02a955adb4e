"""Plain truncated SVD (data-free baseline): min ‖W − AB‖_F."""

from . import register
from .weighting import PLAIN, truncate, truncator


@register("svd", truncator=lambda W, p, cfg: truncator(W, PLAIN))
def decompose(W, prepared, rank, cfg):
    return truncate(W, rank, PLAIN)
