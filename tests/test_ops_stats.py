import math

import pytest
import torch

from svdzip import _reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_abs_mean_and_max_match_reference(native, gen, dtype):
    x = torch.randn(3, 50, 16, generator=gen)
    for acc_dtype in (torch.float32, torch.float64):
        if dtype == torch.float64 and acc_dtype == torch.float32:
            continue
        xs = x.to(dtype)
        a, r = torch.ones(16, dtype=acc_dtype), torch.ones(16, dtype=acc_dtype)
        native.abs_mean_accumulate_(a, xs, 1 / 150)
        _reference.abs_mean_accumulate_(r, xs, 1 / 150)
        assert torch.allclose(a, r, rtol=1e-5)
        a, r = torch.full((16,), 0.5, dtype=acc_dtype), torch.full((16,), 0.5, dtype=acc_dtype)
        native.abs_max_accumulate_(a, xs)
        _reference.abs_max_accumulate_(r, xs)
        assert torch.equal(a, r)


def test_abs_stats_propagate_nan(native):
    x = torch.ones(4, 3)
    x[2, 1] = float("nan")
    mean, mx = torch.zeros(3), torch.zeros(3)
    native.abs_mean_accumulate_(mean, x, 1.0)
    native.abs_max_accumulate_(mx, x)
    assert math.isnan(mean[1]) and math.isnan(mx[1])
    assert mean[0] == 4 and mx[2] == 1


def test_abs_stats_opcheck(native, gen):
    x = torch.randn(5, 7, generator=gen)
    torch.library.opcheck(native.abs_mean_accumulate_.default, (torch.zeros(7), x, 0.2))
    torch.library.opcheck(native.abs_max_accumulate_.default, (torch.zeros(7), x))


def test_abs_stats_bad_shape(native):
    with pytest.raises(ValueError, match=r"acc shape \[4\] does not match x's last dim 3"):
        native.abs_mean_accumulate_(torch.zeros(4), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="does not match"):
        native.abs_max_accumulate_(torch.zeros(4, 4), torch.zeros(2, 4))
