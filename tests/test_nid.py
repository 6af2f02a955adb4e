"""The interpolative decomposition and NID (NSVD's nested scheme with an ID in each stage)."""
import pytest
import torch

import svdzip as sz
from svdzip import methods
from svdzip.methods.interpolative import coefficients, id_truncator, interpolative
from svdzip.methods.weighting import PLAIN, truncate, two_stage, two_stage_many, weighted, whitened, whitened_eigen
from svdzip.methods.interpolative import id_truncate_many
from svdzip.rank import rank_for_ratio
from tiny_models import calib, tiny


def _gram(n, gen, tokens=400):
    X = torch.randn(tokens, n, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, n, dtype=torch.float64)
    return X.T @ X, X


@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (16, 16)])
def test_id_at_full_rank_is_exact(native, gen, shape):
    M = torch.randn(*shape, generator=gen, dtype=torch.float64)
    J, Z = interpolative(M, min(shape))
    assert torch.allclose(M[:, J] @ Z, M, atol=1e-10, rtol=0)
    assert torch.equal(Z[:, J], torch.eye(len(J), dtype=M.dtype))  # the chosen columns reproduce themselves


def test_id_factors_are_columns_of_the_weighted_matrix(native, gen):
    W = torch.randn(24, 40, generator=gen, dtype=torch.float64)
    G, X = _gram(40, gen)
    w = whitened(G, 1e-6)
    A, B = id_truncator(W, w)(10)
    J, _ = interpolative(weighted(W, w), 10)
    assert torch.equal(A, weighted(W, w)[:, J])  # A holds 10 columns of W·S, not a rotation of them
    assert A.shape == (24, 10) and B.shape == (10, 40)
    # The whitened error is the projection's: never below the SVD's optimum, and finite.
    err_id = float(((W - A @ B) @ X.T).norm())
    A2, B2 = truncate(W, 10, w)
    err_svd = float(((W - A2 @ B2) @ X.T).norm())
    assert err_svd <= err_id * (1 + 1e-9) and err_id < 3 * err_svd


def test_id_truncator_shares_one_qr_across_ranks(native, gen):
    W = torch.randn(20, 25, generator=gen, dtype=torch.float64)
    at = id_truncator(W, PLAIN)
    for k in (1, 7, 20):
        A, B = at(k)
        A2, B2 = id_truncate_many([(W, k, PLAIN)])[0]
        assert torch.allclose(A @ B, A2 @ B2, atol=1e-12)
    errs = [float((W - torch.matmul(*at(k))).norm()) for k in (2, 8, 14, 20)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-10  # more columns, less error


def test_id_refuses_a_rank_above_the_numerical_rank(native, gen):
    M = torch.randn(10, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 12, generator=gen, dtype=torch.float64)
    interpolative(M, 3)
    with pytest.raises(ValueError, match="rank 4 exceeds the matrix's numerical rank"):
        interpolative(M, 4)
    with pytest.raises(ValueError, match=r"rank 11 must be in \[1, min\(m, n\) = 10\]"):
        interpolative(M, 11)


def test_nested_id_with_one_weighting_is_one_id_of_the_combined_rank(native, gen):
    # With the same weighting in both stages, stage 1 projects W·S on its first k1 pivoted
    # columns, and the residual's pivoted QR picks the next k − k1 pivots of the same greedy
    # order: together the projection on the k pivots, i.e. one ID at rank k.
    W = torch.randn(30, 40, generator=gen, dtype=torch.float64)
    G, _ = _gram(40, gen)
    w = whitened(G, 1e-6)
    A, B = two_stage_many([(W, 12, 8, w, w)], stage=id_truncate_many)[0]
    A1, B1 = id_truncator(W, w)(12)
    assert torch.allclose(A @ B, A1 @ B1, atol=1e-9 * float(W.abs().max()), rtol=0)


def test_nid_i_and_ii_differ_but_both_fit_the_whitened_objective(native, gen):
    # NSVD-I and NSVD-II agree: the two square roots of G differ by an orthogonal U
    # (L = Q·Λ½·U) and an SVD does not see U. Column pivoting does, so NID-I and NID-II pick
    # different columns and are NOT equal; what they share is the objective they approximate.
    W = torch.randn(30, 40, generator=gen, dtype=torch.float64)
    G, X = _gram(40, gen)
    w1, w2 = whitened(G, 1e-6), whitened_eigen(G, 1e-6)
    k, k1 = 12, 11

    def err(AB):
        return float(((W - AB[0] @ AB[1]) @ X.T).norm())

    nsvd_1, nsvd_2 = two_stage(W, k, k1, w1, PLAIN), two_stage(W, k, k1, w2, PLAIN)
    assert err(nsvd_1) == pytest.approx(err(nsvd_2), rel=1e-9)
    nid_1 = two_stage_many([(W, k, k1, w1, PLAIN)], stage=id_truncate_many)[0]
    nid_2 = two_stage_many([(W, k, k1, w2, PLAIN)], stage=id_truncate_many)[0]
    assert not torch.allclose(nid_1[0] @ nid_1[1], nid_2[0] @ nid_2[1], atol=1e-3)
    best = err(truncate(W, k, w1))
    for nid in (nid_1, nid_2):
        assert best <= err(nid) < 3 * best


def test_nid_on_a_model_meets_the_ratio_like_nsvd(native):
    x = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(3))
    params, ranks = {}, {}
    for method in ("nsvd", "nid"):
        model = tiny("llama")
        dense = model(x).logits
        rep = sz.compress(model, sz.config.CONFIGS[method](ratio=0.6, variant="II"), calib(), progress=False)
        out = model(x).logits
        assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-3)
        assert rep.ratio_targets <= 0.6
        for m in rep.modules:  # each module at the rank the ratio gives, k·(m + n) parameters
            lin = model.get_submodule(m.name)
            assert m.rank == rank_for_ratio(lin.A.shape[0], lin.B.shape[1], 0.6)
            assert lin.A.shape[1] == lin.B.shape[0] == m.rank
        params[method] = sum(p.numel() for p in model.parameters())
        ranks[method] = {m.name: m.rank for m in rep.modules}
    assert params["nid"] == params["nsvd"] and ranks["nid"] == ranks["nsvd"]
    assert methods.required_stats(sz.NIDConfig(stage2="asvd")) == {"gram", "abs_mean"}
