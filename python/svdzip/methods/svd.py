"""Plain truncated SVD (data-free baseline): min ‖W − AB‖_F."""

from . import register
from .weighting import PLAIN, truncate


@register("svd")
def decompose(W, prepared, rank, cfg):
    return truncate(W, rank, PLAIN)
