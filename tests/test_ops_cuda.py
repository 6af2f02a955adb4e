"""CUDA kernels against the pure-torch references (skipped without a GPU: `cuda` marker)."""
import pytest
import torch

from svdzip import _native, _reference

pytestmark = pytest.mark.cuda
OPS = ["gram_accumulate_", "cross_gram_accumulate_", "abs_mean_accumulate_", "abs_max_accumulate_", "batched_svd",
       "whitening_factor", "lowrank_linear"]


@pytest.fixture(scope="module")
def cuda_ops(native):
    """With a GPU present, a build without the CUDA kernels is a failure, not a skip."""
    missing = [op for op in OPS if not _native.has_kernel(op, torch.device("cuda"))]
    assert not missing, f"extension built without CUDA kernels for {missing} (SVDZIP_CUDA=ON)"
    return native


def _cuda_gen():
    return torch.Generator(device="cuda").manual_seed(0)


@pytest.mark.parametrize("acc_dtype,x_dtype", [(torch.float32, torch.float32),
                                               (torch.float64, torch.float32),
                                               (torch.float64, torch.float64),
                                               (torch.float64, torch.bfloat16)])
def test_gram_cuda(cuda_ops, acc_dtype, x_dtype):
    x = torch.randn(3, 700, 72, device="cuda", generator=_cuda_gen()).to(x_dtype)
    acc = torch.zeros(72, 72, dtype=acc_dtype, device="cuda")
    cuda_ops.gram_accumulate_(acc, x, 0.5)
    cuda_ops.gram_accumulate_(acc, x[0], 1.0)
    ref = torch.zeros(72, 72, dtype=torch.float64)
    _reference.gram_accumulate_(ref, x.cpu().double(), 0.5)
    _reference.gram_accumulate_(ref, x[0].cpu().double(), 1.0)
    tol = 1e-3 if acc_dtype == torch.float32 else 1e-9
    assert torch.equal(acc, acc.T), "Gram must be exactly symmetric"
    assert torch.allclose(acc.cpu().double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("acc_dtype,x_dtype", [(torch.float32, torch.float32),
                                               (torch.float64, torch.float32),
                                               (torch.float64, torch.float64)])
def test_cross_gram_cuda(cuda_ops, acc_dtype, x_dtype):
    x = torch.randn(3, 700, 72, device="cuda", generator=_cuda_gen()).to(x_dtype)
    y = torch.randn(2100, 72, device="cuda", generator=_cuda_gen()).to(x_dtype) + x.reshape(-1, 72)
    acc = torch.zeros(72, 72, dtype=acc_dtype, device="cuda")
    cuda_ops.cross_gram_accumulate_(acc, x, y, 0.5)
    ref = torch.zeros(72, 72, dtype=torch.float64)
    _reference.cross_gram_accumulate_(ref, x.cpu().double(), y.cpu().double(), 0.5)
    tol = 1e-3 if acc_dtype == torch.float32 else 1e-9
    assert torch.allclose(acc.cpu().double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
    torch.library.opcheck(cuda_ops.cross_gram_accumulate_.default, (acc, x, y, 1.0))


@pytest.mark.parametrize("rows,n", [(1, 5), (1500, 33), (70000, 40)])
def test_abs_stats_cuda(cuda_ops, rows, n):
    x = torch.randn(rows, n, device="cuda", generator=_cuda_gen())
    acc_sum = torch.zeros(n, dtype=torch.float64, device="cuda")
    acc_max = torch.zeros(n, device="cuda")
    cuda_ops.abs_mean_accumulate_(acc_sum, x, 1.0 / rows)
    cuda_ops.abs_max_accumulate_(acc_max, x)
    assert torch.allclose(acc_sum.cpu(), x.cpu().double().abs().mean(0), rtol=1e-6)
    assert torch.equal(acc_max.cpu(), x.cpu().abs().amax(0))
    x[rows // 2, 0] = float("nan")
    cuda_ops.abs_max_accumulate_(acc_max, x)
    cuda_ops.abs_max_accumulate_(acc_max, x.nan_to_num())
    assert torch.isnan(acc_max[0]) and not torch.isnan(acc_max[1:]).any(), "NaN must stick"


@pytest.mark.parametrize("shape", [(8, 6), (3, 20, 32), (120, 48), (48, 120), (5, 64, 96), (576, 576)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_svd_cuda(cuda_ops, shape, dtype):
    A = torch.randn(*shape, device="cuda", dtype=dtype, generator=_cuda_gen())
    m, n = shape[-2:]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for k in (1, min(m, n) // 2, min(m, n)):
        U, S, Vh = cuda_ops.batched_svd(A, k)
        Sr = torch.linalg.svdvals(A.cpu().double())[..., :k]
        assert torch.allclose(S.cpu().double(), Sr, rtol=tol, atol=tol * float(Sr.max()))
        eye = torch.eye(k, dtype=dtype, device="cuda")
        assert torch.allclose(U.mT @ U, eye.expand(*shape[:-2], k, k), atol=100 * tol)
        assert torch.allclose(Vh @ Vh.mT, eye.expand(*shape[:-2], k, k), atol=100 * tol)
    assert torch.allclose((U * S.unsqueeze(-2)) @ Vh, A, atol=100 * tol * float(S.max()))


def test_svd_cuda_rejects_nan(cuda_ops):
    A = torch.randn(40, 30, device="cuda")
    A[3, 4] = float("inf")
    with pytest.raises(RuntimeError, match="batched_svd: A has 1 non-finite"):
        cuda_ops.batched_svd(A, 5)


def test_whitening_cuda_paths(cuda_ops):
    X = torch.randn(400, 64, dtype=torch.float64, device="cuda", generator=_cuda_gen())
    G = X.T @ X
    F, info = cuda_ops.whitening_factor(G, 1e-6)
    assert info.device.type == "cuda" and int(info[0]) == 0
    assert torch.allclose(F, torch.linalg.cholesky(G), atol=1e-8)
    # Rank-deficient Gram (duplicated channels): jitter or eigen path, never NaN.
    Xd = torch.cat([X[:, :32], X[:, :32]], 1)
    Gd = Xd.T @ Xd
    Fd, infod = cuda_ops.whitening_factor(Gd, 1e-6)
    Fr, infor = _reference.whitening_factor(Gd.cpu(), 1e-6)
    assert int(infod[0]) == int(infor[0]) and int(infod[0]) in (1, 2)
    assert torch.isfinite(Fd).all()
    shift = float(infod[1]) if int(infod[0]) == 1 else 0.0
    target = Gd + shift * torch.eye(64, dtype=Gd.dtype, device="cuda")
    assert torch.allclose(Fd @ Fd.T, target, atol=1e-6 * float(Gd.diagonal().mean()))


def test_whitening_cuda_bad_gram(cuda_ops):
    G = torch.eye(8, device="cuda")
    G[2, 2] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        cuda_ops.whitening_factor(G, 1e-6)
    with pytest.raises(RuntimeError, match="mean diagonal"):
        cuda_ops.whitening_factor(torch.zeros(8, 8, device="cuda"), 1e-6)


@pytest.mark.parametrize("xshape", [(1, 96), (2, 7, 96), (300, 96)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_lowrank_cuda(cuda_ops, xshape, with_bias):
    g = _cuda_gen()
    x = torch.randn(*xshape, device="cuda", generator=g, dtype=torch.float64)
    A = torch.randn(80, 24, device="cuda", generator=g, dtype=torch.float64)
    B = torch.randn(24, 96, device="cuda", generator=g, dtype=torch.float64)
    bias = torch.randn(80, device="cuda", generator=g, dtype=torch.float64) if with_bias else None
    y = cuda_ops.lowrank_linear(x, A, B, bias)
    assert torch.allclose(y, _reference.lowrank_linear(x, A, B, bias), atol=1e-10)


def test_opcheck_cuda(cuda_ops):
    g = _cuda_gen()
    x = torch.randn(50, 16, device="cuda", generator=g)
    G = x.T @ x + torch.eye(16, device="cuda")
    cases = [(cuda_ops.gram_accumulate_, (torch.zeros(16, 16, device="cuda"), x, 1.0)),
             (cuda_ops.abs_mean_accumulate_, (torch.zeros(16, device="cuda"), x, 0.1)),
             (cuda_ops.abs_max_accumulate_, (torch.zeros(16, device="cuda"), x)),
             (cuda_ops.batched_svd, (torch.randn(2, 12, 9, device="cuda", generator=g), 4)),
             (cuda_ops.whitening_factor, (G, 1e-6)),
             (cuda_ops.lowrank_linear, (x, torch.randn(10, 4, device="cuda"),
                                        torch.randn(4, 16, device="cuda"), None))]
    for op, args in cases:
        torch.library.opcheck(op.default, args)


def test_compiled_ops_on_a_side_stream(cuda_ops):
    """Kernels must run on torch's current stream: a side stream and torch.compile together."""
    g = _cuda_gen()
    x = torch.randn(64, 128, device="cuda", generator=g)
    A = torch.randn(96, 16, device="cuda", generator=g)
    B = torch.randn(16, 128, device="cuda", generator=g)

    @torch.compile(fullgraph=True)
    def f(x):
        return torch.ops.svdzip.lowrank_linear(x.relu(), A, B, None) * 2

    expected = f(x)  # default stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = f(x)
        acc = torch.zeros(128, 128, device="cuda")
        torch.ops.svdzip.gram_accumulate_(acc, x, 1.0)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.allclose(out, expected)
    assert torch.allclose(acc, x.T @ x, rtol=1e-4, atol=1e-3)
