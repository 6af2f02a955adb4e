import pytest
import torch

from svdzip.nn import LowRankLinear


def test_from_linear_full_rank_reproduces_the_layer(gen):
    lin = torch.nn.Linear(12, 8)
    low = LowRankLinear.from_linear(lin, 8)
    x = torch.randn(5, 12, generator=gen)
    assert torch.allclose(low(x), lin(x), atol=1e-5)
    assert low.A.shape == (8, 8) and low.B.shape == (8, 12) and torch.equal(low.bias, lin.bias)


def test_from_linear_truncates(gen):
    lin = torch.nn.Linear(12, 8, bias=False)
    low = LowRankLinear.from_linear(lin, 3)
    err = torch.linalg.matrix_norm(lin.weight - low.A @ low.B)
    tail = torch.linalg.svdvals(lin.weight.double())[3:].norm()
    assert err.item() == pytest.approx(tail.item(), rel=1e-4)


def test_gradients_flow_through_the_torch_path(gen):
    low = LowRankLinear.from_linear(torch.nn.Linear(6, 4), 2)
    low(torch.randn(3, 6, generator=gen)).sum().backward()
    assert low.A.grad is not None and low.B.grad is not None


def test_bad_rank_and_nan_factors():
    with pytest.raises(ValueError, match=r"rank = 9 must be in \[1, 8\] for a 8x12 layer"):
        LowRankLinear(12, 8, 9)
    with pytest.raises(ValueError, match="factor B has non-finite values"):
        LowRankLinear.from_factors(torch.ones(4, 2), torch.full((2, 6), float("nan")))
