import pytest
import torch

from svdzip import _reference, ops


def _gram(x):
    return x.T.double() @ x.double()


def _check_factor(F, G, rel):
    err = (F @ F.T - G).abs().max() / G.abs().max()
    assert torch.isfinite(F).all()
    assert err < rel, float(err)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_positive_definite_gram_takes_cholesky(native, gen, impl):
    G = _gram(torch.randn(200, 24, generator=gen))
    F, info = (native.whitening_factor if impl == "native" else _reference.whitening_factor)(G, 1e-6)
    assert info[0] == 0 and info[1] == 0
    assert torch.equal(F, F.tril())  # Cholesky factor is lower-triangular
    _check_factor(F, G, 1e-12)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_singular_gram_recovers_with_jitter(native, gen, impl):
    x = torch.randn(100, 10, generator=gen)
    x = torch.cat([x, x[:, :4], torch.zeros(100, 2)], 1)  # duplicated and dead channels
    G = _gram(x)
    F, info = (native.whitening_factor if impl == "native" else _reference.whitening_factor)(G, 1e-6)
    assert int(info[0]) in (1, 2), info  # not plain Cholesky
    _check_factor(F, G, 1e-4)
    assert torch.linalg.matrix_rank(F) == F.shape[0]  # invertible, as whitening needs


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_singular_gram_without_jitter_uses_eigen(native, gen, impl):
    x = torch.randn(50, 6, generator=gen)
    G = _gram(torch.cat([x, x], 1))
    F, info = (native.whitening_factor if impl == "native" else _reference.whitening_factor)(G, 0.0)
    assert int(info[0]) == 2 and int(info[2]) >= 6, info
    _check_factor(F, G, 1e-10)


def test_native_and_reference_agree_on_path(native, gen):
    for x in (torch.randn(80, 12, generator=gen), torch.randn(5, 12, generator=gen)):
        G = _gram(x)
        _, a = native.whitening_factor(G, 1e-8)
        _, b = _reference.whitening_factor(G, 1e-8)
        assert int(a[0]) == int(b[0])


def test_fp32_gram(native, gen):
    G = _gram(torch.randn(300, 16, generator=gen)).float()
    F, info = native.whitening_factor(G, 1e-6)
    assert F.dtype == torch.float32
    _check_factor(F, G, 1e-5)


def test_wrapper_reports_path(gen):
    w = ops.whitening_factor(_gram(torch.randn(3, 8, generator=gen)))  # 3 samples, 8 channels
    assert w.path in ("cholesky+jitter", "eigen") and w.shift > 0
    assert torch.isfinite(w.factor).all()


def test_whitening_opcheck(native, gen):
    G = _gram(torch.randn(30, 5, generator=gen))
    torch.library.opcheck(native.whitening_factor.default, (G, 1e-6))


@pytest.mark.parametrize("G,jitter,exc,msg", [
    (torch.zeros(4, 4, dtype=torch.float64), 1e-6, RuntimeError, "mean diagonal = 0"),
    (torch.eye(3).double() * float("nan"), 1e-6, RuntimeError, "non-finite value nan"),
    (torch.eye(3).double(), -1.0, ValueError, "jitter = -1"),
    (torch.zeros(3, 4, dtype=torch.float64), 1e-6, ValueError, "square"),
    (torch.eye(3, dtype=torch.float16), 1e-6, TypeError, "float32 or float64"),
])
def test_whitening_bad_input(native, G, jitter, exc, msg):
    with pytest.raises(exc, match=msg):
        native.whitening_factor(G, jitter)
