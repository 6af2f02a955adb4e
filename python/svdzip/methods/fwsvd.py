"""FWSVD (Hsu et al. 2022): rows of W weighted by √(Σ grad²) of the LM loss (Fisher
information per output), SVD of diag(√I)·W, scaled back on A."""

from . import register
from .weighting import row_scale, truncate, truncate_many_prepared, truncator_of_prepared


@register("fwsvd", stats=("fisher",), prepare=lambda stats, cfg: row_scale(stats["fisher"]),
          truncator=truncator_of_prepared, many=truncate_many_prepared)
def decompose(W, prepared, rank, cfg):
    return truncate(W, rank, prepared)
