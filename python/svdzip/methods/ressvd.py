"""ResSVD: residual compensation. Stage 1 at r1 = round(f·r) under `stage1` weighting, the
residual W − Ŵ1 truncated at r − r1 under `stage2`; only the last L blocks are compressed
(block selection lives in rank.py, driven by the config)."""

from . import register
from .nsvd import decompose_many, prepare, split, stage_truncator
from .weighting import two_stage


@register("ressvd", prepare=prepare, truncator=stage_truncator, many=decompose_many)  # stats follow the stage weightings
def decompose(W, prepared, rank, cfg):
    w1, w2 = prepared
    return two_stage(W, rank, split(rank, cfg.first_fraction), w1, w2)
