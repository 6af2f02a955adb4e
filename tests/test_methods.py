"""The math of each method on random matrices with correlated inputs (no model needed)."""

import pytest
import torch

from svdzip import methods
from svdzip.config import ASVDConfig, FWSVDConfig, NIDConfig, NSVDConfig, ResSVDConfig, SVDConfig, SVDLLMConfig
from svdzip.methods import weighting


def _problem(gen, m=24, n=16, T=200):
    W = torch.randn(m, n, generator=gen, dtype=torch.float64)
    mix = torch.randn(n, n, generator=gen, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    X = torch.randn(T, n, generator=gen, dtype=torch.float64) @ mix  # correlated, anisotropic
    stats = {"gram": X.T @ X, "abs_mean": X.abs().mean(0), "abs_max": X.abs().amax(0), "tokens": T}
    return W, X, stats


def _run(cfg, W, stats, k):
    meth = methods.get(cfg.method)
    return meth.decompose(W, meth.prepare(stats, cfg), k, cfg)


def _out_err(W, A, B, X):
    return float(torch.linalg.norm((W - A @ B) @ X.T))


@pytest.mark.parametrize("k", [1, 5, 12])
def test_svd_llm_attains_closed_form_optimum(gen, k):
    W, X, stats = _problem(gen)
    A, B = _run(SVDLLMConfig(), W, stats, k)
    # min over rank-k Ŵ of ‖(W − Ŵ)Xᵀ‖_F is the tail of the singular values of W Xᵀ.
    tail = torch.linalg.svdvals(W @ X.T)[k:].norm()
    assert _out_err(W, A, B, X) == pytest.approx(float(tail), rel=1e-8)
    A2, B2 = _run(SVDConfig(), W, stats, k)
    assert _out_err(W, A2, B2, X) > 1.05 * float(tail)  # plain SVD is measurably worse here


@pytest.mark.parametrize("cfg_cls", [NSVDConfig, ResSVDConfig])
def test_two_stage_with_identical_weighting_equals_rank_k_truncation(gen, cfg_cls):
    W, X, stats = _problem(gen)
    k = 10
    ref_A, ref_B = _run(SVDLLMConfig(), W, stats, k)
    A, B = _run(cfg_cls(stage1="whitened", stage2="whitened", first_fraction=0.6), W, stats, k)
    assert A.shape == (24, k) and B.shape == (k, 16)
    assert torch.allclose(A @ B, ref_A @ ref_B, atol=1e-8)
    # ...and with the default second stage (asvd for nsvd, plain for ressvd) the result differs.
    A3, B3 = _run(cfg_cls(first_fraction=0.6), W, stats, k)
    assert not torch.allclose(A3 @ B3, ref_A @ ref_B, atol=1e-4)
    assert _out_err(W, A3, B3, X) >= _out_err(W, ref_A, ref_B, X) - 1e-9  # whitened is optimal


def test_nsvd_split_and_variants(gen):
    W, X, stats = _problem(gen)
    A, B = _run(NSVDConfig(), W, stats, 12)
    assert A.shape[1] == 12  # k1 = round(0.95 * 12) = 11, k2 = 1
    # NSVD-I (Cholesky) and NSVD-II (eigen factor) whiten by different square roots of the
    # same Gram; the optimal stage 1 does not depend on which: results agree.
    A2, B2 = _run(NSVDConfig(variant="II"), W, stats, 12)
    assert torch.allclose(A @ B, A2 @ B2, atol=1e-7)


@pytest.mark.parametrize("cfg", [ASVDConfig(), ASVDConfig(stat="max", alpha=1.0), SVDConfig(),
                                 SVDLLMConfig(), NSVDConfig(), NIDConfig(), NIDConfig(variant="II")])
def test_full_rank_fold_back_is_exact(gen, cfg):
    W, X, stats = _problem(gen)
    A, B = _run(cfg, W, stats, 16)
    assert torch.allclose(A @ B, W, atol=1e-9)


def test_asvd_scales_by_activation_magnitude(gen):
    W, X, stats = _problem(gen)
    w = methods.get("asvd").prepare(stats, ASVDConfig(alpha=0.5))
    assert torch.allclose(w.right, stats["abs_mean"].sqrt())
    A, B = _run(ASVDConfig(), W, stats, 6)
    A0, B0 = _run(SVDConfig(), W, stats, 6)
    assert _out_err(W, A, B, X) < _out_err(W, A0, B0, X)


def test_fwsvd_uniform_fisher_is_plain_svd_and_weighted_error_is_lower(gen):
    W, X, stats = _problem(gen)
    A0, B0 = _run(SVDConfig(), W, stats, 6)
    A, B = _run(FWSVDConfig(), W, {"fisher": torch.ones(24, dtype=torch.float64)}, 6)
    assert torch.allclose(A @ B, A0 @ B0, atol=1e-9)
    fisher = torch.logspace(0, 4, 24, dtype=torch.float64)
    A, B = _run(FWSVDConfig(), W, {"fisher": fisher}, 6)
    weighted = lambda D: float((fisher.sqrt()[:, None] * D).norm())
    assert weighted(W - A @ B) < weighted(W - A0 @ B0)


def test_singular_gram_falls_back_without_nan(gen):
    W, X, stats = _problem(gen)
    X = torch.cat([X[:, :10], X[:, :4], torch.zeros(200, 2, dtype=torch.float64)], 1)
    stats = {"gram": X.T @ X, "abs_mean": X.abs().mean(0)}
    for cfg in (SVDLLMConfig(), NSVDConfig(), ResSVDConfig(), ASVDConfig()):
        meth = methods.get(cfg.method)
        prep = meth.prepare(stats, cfg)
        A, B = meth.decompose(W, prep, 8, cfg)
        assert torch.isfinite(A).all() and torch.isfinite(B).all(), cfg.method
        notes = (prep[0] if isinstance(prep, tuple) else prep).notes
        assert notes.get("whitening", "x") != "cholesky" or cfg.method == "asvd", notes
        if cfg.method == "asvd":
            assert notes["dead_channels"] == 2


def test_eigen_weighting_is_a_square_root_of_the_gram(gen):
    _, _, stats = _problem(gen)
    w = weighting.whitened_eigen(stats["gram"], 1e-12)
    assert torch.allclose(w.right @ w.right.T, stats["gram"], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("cfg", [SVDConfig(), ASVDConfig(), SVDLLMConfig(), NSVDConfig(), ResSVDConfig(),
                                 NSVDConfig(variant="II"), NIDConfig(), NIDConfig(variant="II", stage2="asvd")])
def test_truncator_equals_decompose_at_every_rank(gen, cfg):
    """Rank-allocation trials truncate one SVD instead of refactoring: same factors' product."""
    W, _, stats = _problem(gen)
    meth = methods.get(cfg.method)
    prepared = meth.prepare(stats, cfg)
    trunc = meth.truncator(W, prepared, cfg)
    for k in (1, 4, 9, 16):
        A, B = trunc(k)
        A2, B2 = meth.decompose(W, prepared, k, cfg)
        assert A.shape == (24, k) and B.shape == (k, 16)
        assert torch.allclose(A @ B, A2 @ B2, atol=1e-9), (cfg.method, k)


@pytest.mark.parametrize("cfg", [SVDConfig(), ASVDConfig(), SVDLLMConfig(), NSVDConfig(), ResSVDConfig(),
                                 FWSVDConfig(), NIDConfig()], ids=lambda c: c.method)
def test_decompose_many_equals_one_by_one(gen, cfg):
    # A block's modules are decomposed together (same-shaped SVDs in one batched call, run
    # one matrix per thread): the factors must be those of decomposing each module alone.
    meth = methods.get(cfg.method)
    jobs = []
    for m, n, k in [(24, 16, 5), (24, 16, 9), (10, 16, 3), (24, 16, 5)]:
        W, _, stats = _problem(gen, m=m, n=n)
        stats["fisher"] = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
        jobs.append((W, meth.prepare(stats, cfg), k))
    together = meth.decompose_many(jobs, cfg)
    assert len(together) == len(jobs)
    for (W, prepared, k), (A, B) in zip(jobs, together):
        A1, B1 = meth.decompose(W, prepared, k, cfg)
        assert A.shape == A1.shape and B.shape == B1.shape
        assert torch.allclose(A @ B, A1 @ B1, atol=1e-9)
