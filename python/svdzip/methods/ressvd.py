"""ResSVD: residual compensation. Stage 1 at r1 = round(f·r) under `stage1` weighting, the
residual W − Ŵ1 truncated at r − r1 under `stage2`; only the last L blocks are compressed
(block selection lives in rank.py, driven by the config)."""

from . import register
from .nsvd import decompose_many, prepare, stage_truncator


@register("ressvd", prepare=prepare, truncator=stage_truncator, many=decompose_many)  # stats follow the stage weightings
def decompose(W, prepared, rank, cfg):
    return decompose_many([(W, prepared, rank)], cfg)[0]
