"""SVD-LLM (Wang et al. 2024): SVD of W·S with S Sᵀ = XᵀX, folded back by S⁻¹.
Minimises the layer's output error ‖(W − AB)Xᵀ‖_F over rank-k pairs."""

from . import register
from .weighting import truncate, truncate_many_prepared, truncator_of_prepared, whitened


@register("svd_llm", stats=("gram",), prepare=lambda stats, cfg: whitened(stats["gram"], cfg.calibration.jitter),
          truncator=truncator_of_prepared, many=truncate_many_prepared)
def decompose(W, prepared, rank, cfg):
    return truncate(W, rank, prepared)
