"""column_pivoted_qr (LAPACK geqp3) vs the pure-torch reference, and its contract."""
import pytest
import torch

from svdzip import _reference
from svdzip.methods.interpolative import coefficients


def _decaying(m, n, gen, dtype=torch.float64):
    """A matrix with well-separated singular values, so pivots are not decided by rounding."""
    U, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen, dtype=torch.float64))
    s = 0.7 ** torch.arange(min(m, n), dtype=torch.float64)
    return ((U * s) @ V.T).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("shape", [(7, 12), (12, 7), (30, 30), (40, 90), (1, 5), (5, 1)])
def test_pivoted_qr_matches_reference(native, gen, shape, dtype, tol):
    A = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
    R, perm = native.column_pivoted_qr(A)
    R_ref, perm_ref = _reference.column_pivoted_qr(A)
    k = min(shape)
    assert R.shape == R_ref.shape == (k, shape[1]) and perm.dtype == torch.long
    assert torch.equal(perm[:k], perm_ref[:k])
    assert sorted(perm.tolist()) == list(range(shape[1]))  # a permutation
    # Same R up to the signs of its rows (Householder vs Gram-Schmidt); the ID coefficients
    # do not see those signs.
    scale = float(A.abs().max())
    assert torch.allclose(R[:, :k].abs(), R_ref[:, :k].abs(), atol=tol * scale, rtol=0)
    assert torch.allclose(coefficients(R, perm, k), coefficients(R_ref, perm_ref, k), atol=tol * 10, rtol=0)


@pytest.mark.parametrize("shape", [(20, 50), (50, 20), (33, 33)])
def test_pivoted_qr_factors_the_permuted_matrix(native, gen, shape):
    A = _decaying(*shape, gen)
    R, perm = native.column_pivoted_qr(A)
    Ap = A[:, perm]
    # A[:, perm] = Q R with orthonormal Q  <=>  Rᵀ R = A[:, perm]ᵀ A[:, perm] (R upper).
    assert torch.allclose(R.T @ R, Ap.T @ Ap, atol=1e-12, rtol=0)
    assert torch.equal(R, R.triu())
    d = R.diagonal().abs()
    assert bool((d[:-1] >= d[1:] * (1 - 1e-12)).all())  # the pivot rule: non-increasing


def test_pivoted_qr_opcheck(native, gen):
    A = torch.randn(9, 14, generator=gen, dtype=torch.float64)
    torch.library.opcheck(torch.ops.svdzip.column_pivoted_qr.default, (A,))


def test_pivoted_qr_rejects_bad_input(native):
    with pytest.raises(RuntimeError, match="non-finite value nan at \\(1, 2\\)"):
        A = torch.ones(3, 4, dtype=torch.float64)
        A[1, 2] = float("nan")
        native.column_pivoted_qr(A)
    with pytest.raises(ValueError, match="must be a non-empty matrix"):
        native.column_pivoted_qr(torch.ones(2, 3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        native.column_pivoted_qr(torch.ones(3, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="must be a non-empty matrix"):
        _reference.column_pivoted_qr(torch.ones(0, 3))
