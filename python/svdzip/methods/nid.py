"""NID (the NSVD paper's nested interpolative decomposition): NSVD's two stages with an
interpolative decomposition (methods/interpolative.py) in place of each truncated SVD.
NID-I whitens stage 1 by the Cholesky factor of the Gram, NID-II by its eigen factor.
Unlike NSVD-I and NSVD-II, the two are not equal: an SVD is invariant under the orthogonal
matrix relating the two square roots of the Gram (L = Q·Λ½·U), column pivoting is not."""

from . import register
from .interpolative import id_truncate_many, id_truncator
from .nsvd import prepare, split
from .weighting import two_stage_many, two_stage_truncator


def stage_truncator(W, prepared, cfg):
    return two_stage_truncator(W, *prepared, lambda k: split(k, cfg.first_fraction),
                               first_truncator=id_truncator, stage=id_truncate_many)


def decompose_many(jobs, cfg):
    return two_stage_many([(W, k, split(k, cfg.first_fraction), *p) for W, p, k in jobs],
                          stage=id_truncate_many)


@register("nid", prepare=prepare, truncator=stage_truncator, many=decompose_many)  # stats follow the stage weightings
def decompose(W, prepared, rank, cfg):
    return decompose_many([(W, prepared, rank)], cfg)[0]
