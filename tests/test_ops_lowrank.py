import pytest
import torch

from svdzip import _reference, ops


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-12)])
@pytest.mark.parametrize("xshape", [(1, 24), (7, 24), (2, 5, 24), (0, 24)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_lowrank_matches_reference(native, gen, dtype, tol, xshape, with_bias):
    x = torch.randn(*xshape, generator=gen, dtype=dtype)
    A = torch.randn(18, 6, generator=gen, dtype=dtype)
    B = torch.randn(6, 24, generator=gen, dtype=dtype)
    bias = torch.randn(18, generator=gen, dtype=dtype) if with_bias else None
    y = native.lowrank_linear(x, A, B, bias)
    ref = _reference.lowrank_linear(x, A, B, bias)
    assert y.shape == (*xshape[:-1], 18)
    assert torch.allclose(y, ref, atol=tol, rtol=tol)


def test_lowrank_non_contiguous_inputs(native, gen):
    x = torch.randn(24, 9, generator=gen).T  # (9, 24) transposed view
    A = torch.randn(6, 18, generator=gen).T
    B = torch.randn(24, 6, generator=gen).T
    assert torch.allclose(native.lowrank_linear(x, A, B, None), (x @ B.T) @ A.T, atol=1e-5)


def test_lowrank_opcheck(native, gen):
    args = (torch.randn(3, 8, generator=gen), torch.randn(5, 2, generator=gen),
            torch.randn(2, 8, generator=gen), torch.randn(5, generator=gen))
    torch.library.opcheck(native.lowrank_linear.default, args)


def test_lowrank_under_torch_compile(native, gen):
    A, B = torch.randn(10, 3, generator=gen), torch.randn(3, 12, generator=gen)

    @torch.compile(fullgraph=True, backend="eager")
    def f(x):
        return torch.relu(ops.lowrank_linear(x, A, B))

    x = torch.randn(4, 12, generator=gen)
    assert torch.allclose(f(x), torch.relu((x @ B.T) @ A.T), atol=1e-5)


def test_wrapper_handles_bfloat16_through_reference(gen):
    x = torch.randn(3, 8, generator=gen).bfloat16()
    A, B = torch.randn(5, 2, generator=gen).bfloat16(), torch.randn(2, 8, generator=gen).bfloat16()
    assert ops.lowrank_linear(x, A, B).dtype == torch.bfloat16


@pytest.mark.parametrize("shapes,msg", [
    (((3, 8), (5, 2), (3, 8), None), "need A \\(m, k\\) and B \\(k, n\\)"),
    (((3, 7), (5, 2), (2, 8), None), "x's last dim 7 != B's in-features 8"),
    (((3, 8), (5, 2), (2, 8), (4,)), "bias must be \\(5\\)"),
])
def test_lowrank_bad_shapes(native, shapes, msg):
    xs, As, Bs, bs = shapes
    bias = torch.zeros(bs) if bs else None
    with pytest.raises(ValueError, match=msg):
        native.lowrank_linear(torch.zeros(xs), torch.zeros(As), torch.zeros(Bs), bias)


def test_lowrank_dtype_mismatch(native):
    with pytest.raises(TypeError, match="dtypes differ"):
        native.lowrank_linear(torch.zeros(2, 4), torch.zeros(3, 2, dtype=torch.float64),
                              torch.zeros(2, 4), None)
