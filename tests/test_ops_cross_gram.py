"""cross_gram_accumulate_ (acc += alpha·xᵀy, two streams at the same tokens) vs the reference."""
import pytest
import torch

from svdzip import _reference, ops


@pytest.mark.parametrize("x_dtype,acc_dtype,tol", [
    (torch.float32, torch.float32, 1e-4),
    (torch.float32, torch.float64, 1e-10),
    (torch.float64, torch.float64, 1e-12),
    (torch.bfloat16, torch.float64, 1e-10),
])
@pytest.mark.parametrize("shape", [(7, 5), (3, 900, 17), (5000, 64), (1, 1), (2, 50, 300)])
def test_cross_gram_matches_reference(native, gen, shape, x_dtype, acc_dtype, tol):
    x = torch.randn(*shape, generator=gen).to(x_dtype)
    y = (torch.randn(*shape, generator=gen) + 0.3 * x.float()).to(x_dtype)
    n = shape[-1]
    start = torch.randn(n, n, generator=gen, dtype=acc_dtype)  # not symmetric: C is not
    acc, ref = start.clone(), start.clone()
    native.cross_gram_accumulate_(acc, x, y, 0.5)
    _reference.cross_gram_accumulate_(ref, x, y, 0.5)
    assert torch.allclose(acc, ref, atol=tol * float(ref.abs().max()), rtol=0), (acc - ref).abs().max()
    exact = start.double() + 0.5 * x.reshape(-1, n).double().T @ y.reshape(-1, n).double()
    assert torch.allclose(acc.double(), exact, atol=tol * float(exact.abs().max()) * 10, rtol=0)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_cross_gram_slabs_in_parallel(native, gen, threads):
    # One row slab of acc per torch thread: every split gives the reference, nothing else touched.
    x, y = torch.randn(300, 700, generator=gen), torch.randn(300, 700, generator=gen)
    acc = torch.zeros(700, 700, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native.cross_gram_accumulate_(acc, x, y, 1.0)
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(acc, x.double().T @ y.double(), atol=1e-10 * float(acc.abs().max()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_gram_chunked_equals_unchunked(native, gen, dtype):
    x, y = torch.randn(4000, 48, generator=gen).to(dtype), torch.randn(4000, 48, generator=gen).to(dtype)
    whole, chunked = torch.zeros(48, 48, dtype=torch.float64), torch.zeros(48, 48, dtype=torch.float64)
    native.cross_gram_accumulate_(whole, x, y, 1.0)
    for a, b in zip(x.split(700), y.split(700)):
        native.cross_gram_accumulate_(chunked, a, b, 1.0)
    assert torch.allclose(whole, chunked, rtol=1e-12, atol=1e-12 * float(whole.abs().max()))


def test_cross_gram_of_a_stream_with_itself_is_its_gram(native, gen):
    x = torch.randn(500, 40, generator=gen, dtype=torch.float64)
    c, g = torch.zeros(40, 40, dtype=torch.float64), torch.zeros(40, 40, dtype=torch.float64)
    native.cross_gram_accumulate_(c, x, x, 1.0)
    native.gram_accumulate_(g, x, 1.0)
    assert torch.allclose(c, g, rtol=1e-12, atol=1e-12 * float(g.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_gram_opcheck(native, gen, dtype):
    acc = torch.zeros(6, 6, dtype=dtype)
    x, y = torch.randn(4, 3, 6, generator=gen, dtype=dtype), torch.randn(12, 6, generator=gen, dtype=dtype)
    torch.library.opcheck(native.cross_gram_accumulate_.default, (acc, x, y, 1.0))


BAD = [
    (torch.zeros(4, 4), torch.zeros(3, 5), torch.zeros(3, 5), ValueError, "does not match x's last dim 5"),
    (torch.zeros(4, 4), torch.zeros(3, 4), torch.zeros(2, 4), ValueError, "same rows"),
    (torch.zeros(4, 4, dtype=torch.int32), torch.zeros(3, 4), torch.zeros(3, 4), TypeError,
     "acc must be float32 or float64"),
    (torch.zeros(4, 4), torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 4), TypeError, "lose precision"),
]


@pytest.mark.parametrize("acc,x,y,exc,msg", BAD + [
    (torch.zeros(4, 8)[:, ::2], torch.zeros(3, 4), torch.zeros(3, 4), ValueError, "contiguous")])
def test_cross_gram_bad_input_native(native, acc, x, y, exc, msg):
    with pytest.raises(exc, match=msg):
        native.cross_gram_accumulate_(acc, x, y, 1.0)


@pytest.mark.parametrize("acc,x,y,exc,msg", BAD)  # the same messages from the fallback
def test_cross_gram_bad_input_reference(acc, x, y, exc, msg):
    with pytest.raises(exc, match=msg):
        _reference.cross_gram_accumulate_(acc, x, y, 1.0)


def test_cross_gram_wrapper_routes_to_reference_for_other_dtypes():
    with pytest.raises(TypeError, match="acc must be float32 or float64"):
        ops.cross_gram_accumulate_(torch.zeros(3, 3, dtype=torch.float16), torch.zeros(2, 3), torch.zeros(2, 3))
