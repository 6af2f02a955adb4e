import pytest
import torch

from svdzip import _reference, ops


@pytest.mark.parametrize("x_dtype,acc_dtype,tol", [
    (torch.float32, torch.float32, 1e-4),
    (torch.float32, torch.float64, 1e-10),
    (torch.float64, torch.float64, 1e-12),
    (torch.bfloat16, torch.float64, 1e-10),
])
@pytest.mark.parametrize("shape", [(7, 5), (3, 900, 17), (5000, 64), (1, 1)])
def test_gram_matches_reference(native, gen, shape, x_dtype, acc_dtype, tol):
    x = torch.randn(*shape, generator=gen).to(x_dtype)
    n = shape[-1]
    start = torch.randn(n, n, generator=gen, dtype=acc_dtype)
    start = start @ start.T  # symmetric, as a running Gram is
    acc, ref = start.clone(), start.clone()
    native.gram_accumulate_(acc, x, 0.5)
    _reference.gram_accumulate_(ref, x, 0.5)
    scale = ref.abs().max()
    assert torch.allclose(acc, ref, atol=tol * scale, rtol=0), (acc - ref).abs().max()
    assert torch.equal(acc, acc.T)  # both triangles filled


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [129, 700])
def test_gram_row_slabs_in_parallel_match_reference(native, gen, threads, n):
    # The CPU op splits the triangle into one row slab per torch thread (n // 64 at most):
    # every split must give the reference, with both triangles filled and nothing outside.
    x = torch.randn(300, n, generator=gen)
    start = torch.randn(n, n, generator=gen, dtype=torch.float64)
    start = start @ start.T
    acc, ref = start.clone(), start.clone()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native.gram_accumulate_(acc, x, 0.25)
    finally:
        torch.set_num_threads(before)
    _reference.gram_accumulate_(ref, x, 0.25)
    assert torch.allclose(acc, ref, atol=1e-10 * float(ref.abs().max()), rtol=0)
    assert torch.equal(acc, acc.T)


def test_gram_streams_long_inputs_in_fp64(native, gen):
    # A long stream of fp32 rows into an fp64 acc keeps fp64 accuracy (chunks widened).
    x = torch.randn(20000, 8, generator=gen) + 100.0
    acc = torch.zeros(8, 8, dtype=torch.float64)
    for chunk in x.split(3000):
        native.gram_accumulate_(acc, chunk, 1.0)
    exact = x.double().T @ x.double()
    assert torch.allclose(acc, exact, rtol=1e-12, atol=0)


def test_gram_zeros_and_duplicate_columns(native):
    x = torch.zeros(10, 4)
    acc = torch.zeros(4, 4, dtype=torch.float64)
    native.gram_accumulate_(acc, x, 1.0)
    assert torch.count_nonzero(acc) == 0
    col = torch.arange(10.0).unsqueeze(1)
    native.gram_accumulate_(acc, torch.cat([col, col, col, col], 1), 1.0)
    assert torch.allclose(acc, torch.full((4, 4), float((col**2).sum()), dtype=torch.float64))


def test_gram_opcheck(native, gen):
    acc = torch.zeros(6, 6)
    x = torch.randn(4, 3, 6, generator=gen)
    torch.library.opcheck(native.gram_accumulate_.default, (acc, x, 1.0))


@pytest.mark.parametrize("acc,x,exc,msg", [
    (torch.zeros(4, 4), torch.zeros(3, 5), ValueError, "does not match x's last dim 5"),
    (torch.zeros(4, 4, dtype=torch.int32), torch.zeros(3, 4), TypeError, "acc must be float32 or float64"),
    (torch.zeros(4, 4), torch.zeros(3, 4, dtype=torch.int64), TypeError, "x must be floating point"),
    (torch.zeros(4, 4), torch.zeros(3, 4, dtype=torch.float64), TypeError, "lose precision"),
    (torch.zeros(4, 8)[:, ::2], torch.zeros(3, 4), ValueError, "contiguous"),
])
def test_gram_bad_input(native, acc, x, exc, msg):
    with pytest.raises(exc, match=msg):
        native.gram_accumulate_(acc, x, 1.0)


def test_gram_wrapper_falls_back_for_reference_only_dtypes(gen):
    # ops.* routes float16 accumulators (no native kernel) to the reference, with its own error.
    with pytest.raises(TypeError, match="acc must be float32 or float64"):
        ops.gram_accumulate_(torch.zeros(3, 3, dtype=torch.float16), torch.zeros(2, 3))
