"""The error-compensated objective: closed form vs brute force, the pipeline's paired streams."""
import pytest
import torch

import svdzip as sz
from svdzip.calibration.collector import InputCapture
from svdzip.methods import compensated
from svdzip.methods.weighting import truncate, whitened

from tiny_models import calib, tiny


def _problem(seed: int, m=6, n=5, tokens=40, drift=0.3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    X = torch.randn(tokens, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    Xt = X + drift * torch.randn(tokens, n, generator=g, dtype=torch.float64)  # the compressed model's inputs
    return W, X, Xt


def _closed_form(W, X, Xt, k):
    T, _ = compensated.target_map(Xt.T @ Xt, X.T @ Xt, jitter=0.0)
    A, B = truncate(compensated.compensated_weight(W, T), k, whitened(Xt.T @ Xt, 0.0))
    return A @ B


def _alternating_least_squares(W, X, Xt, k, seed, iters=400):
    """Brute force: min ‖W·X − A·B·X̃‖ over A (m×k), B (k×n) from a random start."""
    g = torch.Generator().manual_seed(seed)
    Y, Z = X @ W.T, Xt  # targets (tokens×m); inputs (tokens×n)
    B = torch.randn(k, W.shape[1], generator=g, dtype=torch.float64)
    for _ in range(iters):
        A = torch.linalg.lstsq(Z @ B.T, Y).solution.T              # min over A of ‖Y − Z Bᵀ Aᵀ‖
        B = (torch.linalg.pinv(A) @ torch.linalg.lstsq(Z, Y).solution.T)  # min over B given A
    return A @ B


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_closed_form_is_the_brute_force_optimum(seed, k):
    W, X, Xt = _problem(seed)
    best = compensated.objective(W, _closed_form(W, X, Xt, k), X, Xt)
    brute = min(compensated.objective(W, _alternating_least_squares(W, X, Xt, k, s), X, Xt) for s in range(3))
    assert best <= brute * (1 + 1e-9)
    assert brute <= best * (1 + 1e-4), "alternating least squares should reach the optimum here"


@pytest.mark.parametrize("seed", range(4))
def test_compensated_beats_ordinary_whitening_on_its_objective(seed):
    W, X, Xt = _problem(seed, m=12, n=10, tokens=80, drift=0.5)
    k = 4
    A, B = truncate(W, k, whitened(Xt.T @ Xt, 0.0))  # SVD-LLM on the compressed inputs
    plain = compensated.objective(W, A @ B, X, Xt)
    ours = compensated.objective(W, _closed_form(W, X, Xt, k), X, Xt)
    assert ours < plain * 0.99


def test_equals_ordinary_whitening_when_the_inputs_agree():
    W, X, _ = _problem(7)
    T, notes = compensated.target_map(X.T @ X, X.T @ X, jitter=0.0)
    assert torch.allclose(T, torch.eye(5, dtype=torch.float64), atol=1e-9)
    A, B = truncate(W, 3, whitened(X.T @ X, 0.0))
    assert torch.allclose(_closed_form(W, X, X, 3), A @ B, atol=1e-9)
    assert notes["compensation_whitening"] == "cholesky"


def test_singular_gram_takes_the_fallback_and_stays_finite():
    W, X, Xt = _problem(3)
    Xt[:, 2] = 0.0  # a dead channel: G̃ singular, C's column 2 zero
    T, notes = compensated.target_map(Xt.T @ Xt, X.T @ Xt, jitter=1e-6)
    assert torch.isfinite(T).all() and notes["compensation_whitening"] != "cholesky"
    assert torch.allclose(T[:, 2], torch.zeros(5, dtype=torch.float64))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="must be the same"):
        compensated.target_map(torch.eye(4), torch.eye(5), 1e-6)


@pytest.mark.parametrize("kw,msg", [
    ({"method": "svd_llm", "sequential": False}, "set sequential=True"),
    ({"method": "asvd", "sequential": True}, "needs a whitened method"),
    ({"method": "nsvd", "sequential": True, "stage1": "asvd"}, "needs a whitened method"),
    ({"method": "svd_llm", "sequential": True, "objective": "best"}, "must be one of"),
])
def test_config_refuses_what_cannot_work(kw, msg):
    kw = {"objective": "compensated", **kw}
    with pytest.raises(ValueError, match=msg):
        sz.build_config(ratio=0.6, **kw)


def _inputs(model, name, ids):
    mod = model.get_submodule(name)
    with InputCapture({name: mod}) as cap, torch.no_grad():
        model(ids)
    return cap.inputs[name].reshape(-1, cap.inputs[name].shape[-1])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_pipeline_fits_the_compressed_inputs_to_the_dense_outputs(arch):
    ids = calib(8, 32)  # 256 tokens > 128 channels: every Gram non-singular, so X̃ = X gives T = I
    dense = tiny(arch)
    plain, comp = tiny(arch), tiny(arch)
    sz.compress(plain, sz.build_config("svd_llm", ratio=0.5, sequential=True), ids, progress=False)
    rep = sz.compress(comp, sz.build_config("svd_llm", ratio=0.5, sequential=True, objective="compensated"), ids,
                      progress=False)
    assert rep.modules[0].notes["compensation_whitening"] in ("cholesky", "cholesky+jitter", "eigen")
    # block 0 sees the dense model's inputs either way: X̃ = X, so the same factors
    q0p, q0c = (m.model.layers[0].self_attn.q_proj for m in (plain, comp))
    assert torch.allclose(q0p.A @ q0p.B, q0c.A @ q0c.B, atol=1e-5)
    # block 1's entry comes from the identical block 0, so q/k/v's inputs (the block's hidden
    # state through a norm, as at collection time) are the same in both models, and the
    # compensated fit has the smaller ‖W·X − Ŵ·X̃‖ on them. (Later modules of the block see its
    # own compressed attention at run time, which the collection pass did not.)
    for suffix in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        name = f"model.layers.1.{suffix}"
        W = dense.get_submodule(name).weight
        X, Xt = _inputs(dense, name, ids), _inputs(comp, name, ids)
        assert torch.allclose(Xt, _inputs(plain, name, ids))
        wp, wc = (m.get_submodule(name) for m in (plain, comp))
        assert compensated.objective(W, wc.A @ wc.B, X, Xt) < compensated.objective(W, wp.A @ wp.B, X, Xt)
