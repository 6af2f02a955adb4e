import pytest
import torch

from svdzip import _reference

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _inputs(gen, dtype):
    tall = torch.randn(40, 12, generator=gen)
    wide = torch.randn(9, 31, generator=gen)
    dup = torch.randn(20, 6, generator=gen)
    dup = torch.cat([dup, dup[:, :3]], 1)  # duplicated columns: rank 6 of 9
    lowrank = torch.randn(30, 3, generator=gen) @ torch.randn(3, 25, generator=gen)
    batch = torch.randn(4, 3, 16, 10, generator=gen)
    cases = {"tall": tall, "wide": wide, "duplicated_columns": dup, "rank3": lowrank,
             "batched_4d": batch, "zeros": torch.zeros(8, 5), "one_by_one": torch.full((1, 1), -2.0)}
    return {k: v.to(dtype) for k, v in cases.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_svd_matches_reference(native, gen, dtype):
    for name, A in _inputs(gen, dtype).items():
        m, n = A.shape[-2:]
        for k in sorted({1, min(m, n) // 2 or 1, min(m, n)}):
            U, S, Vh = native.batched_svd(A, k)
            Ur, Sr, Vhr = _reference.batched_svd(A, k)
            scale = max(float(Sr.max()), 1.0)
            assert U.shape == Ur.shape and S.shape == Sr.shape and Vh.shape == Vhr.shape, name
            assert torch.allclose(S, Sr, atol=TOL[dtype] * scale, rtol=0), (name, k)
            # Singular vectors are unique only up to sign/rotation: compare what is unique.
            if k == min(m, n):
                assert torch.allclose((U * S.unsqueeze(-2)) @ Vh, A, atol=10 * TOL[dtype] * scale), name
            eye = torch.eye(k, dtype=dtype)
            nonzero = S > 1e-6 * scale
            if bool(nonzero.all()):
                assert torch.allclose(U.mT @ U, eye.expand_as(U.mT @ U), atol=1e-4), name
                assert torch.allclose(Vh @ Vh.mT, eye.expand_as(Vh @ Vh.mT), atol=1e-4), name


def test_svd_truncation_is_eckart_young(native, gen):
    A = torch.randn(50, 30, generator=gen, dtype=torch.float64)
    U, S, Vh = native.batched_svd(A, 10)
    full = torch.linalg.svdvals(A)
    err = torch.linalg.matrix_norm(A - (U * S) @ Vh)
    assert torch.allclose(err, full[10:].norm(), rtol=1e-10)


def test_svd_opcheck(native, gen):
    torch.library.opcheck(native.batched_svd.default, (torch.randn(2, 6, 4, generator=gen), 3))


@pytest.mark.parametrize("A,k,exc,msg", [
    (torch.zeros(5, 4), 5, ValueError, r"k = 5 must be in \[1, min\(m, n\) = 4\]"),
    (torch.zeros(5, 4), 0, ValueError, "k = 0 must be in"),
    (torch.zeros(5), 1, ValueError, "at least 2 dims"),
    (torch.zeros(5, 4, dtype=torch.int64), 1, TypeError, "float32 or float64"),
])
def test_svd_bad_input(native, A, k, exc, msg):
    with pytest.raises(exc, match=msg):
        native.batched_svd(A, k)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch,bad", [(2, 1), (5, 3), (1, 0)])
def test_svd_rejects_nan_and_names_matrix_and_position(native, threads, batch, bad):
    # batches of at least the thread count run one matrix per thread: the message must still
    # name the matrix by its place in the whole batch
    A = torch.ones(batch, 4, 3)
    A[bad, 2, 0] = float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.raises(RuntimeError, match=rf"matrix {bad}: input has a non-finite value nan at \(2, 0\)"):
            native.batched_svd(A, 2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_svd_batch_split_across_threads_matches_reference(native, gen, threads):
    A = torch.randn(5, 40, 30, generator=gen, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        U, S, Vh = native.batched_svd(A, 30)
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(S, torch.linalg.svdvals(A), rtol=1e-12, atol=0)
    assert torch.allclose((U * S.unsqueeze(-2)) @ Vh, A, atol=1e-12)


def test_svd_recovers_where_gesdd_does_not_converge(native):
    # An NSVD stage-2 residual of a SmolLM2 attention projection (rank 12 asked) on which
    # OpenBLAS's dgesdd returns info = 1; the op must fall back to gesvd, not raise.
    from pathlib import Path

    from safetensors.torch import load_file

    A = load_file(str(Path(__file__).parent / "data" / "gesdd_nonconvergent_576x576.safetensors"))["residual"]
    U, S, Vh = native.batched_svd(A, 12)
    full = torch.linalg.svdvals(A)
    assert torch.allclose(S, full[:12], rtol=1e-10, atol=1e-12)
    err = torch.linalg.matrix_norm(A - (U * S) @ Vh)
    assert torch.allclose(err, full[12:].norm(), rtol=1e-8)
