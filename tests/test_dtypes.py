"""bf16 / fp16 models: statistics in fp64, factors stored in the model's dtype, the dtype kept
through save and load, fp16 overflow balanced away or named."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

import svdzip as sz
from svdzip import dtypes, methods
from tiny_models import calib, tiny

HALF = [torch.bfloat16, torch.float16]


def _half_model(tmp_path, arch, dtype):
    # from_pretrained(dtype=...) is how users get a bf16 model: the rotary buffers stay fp32
    # (model.to(dtype) would cast them too, and a reloaded model would then differ)
    tiny(arch).save_pretrained(tmp_path / "dense")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=dtype).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", ["svd_llm", "nsvd", "asvd"])
def test_half_model_compresses_saves_and_loads_in_its_dtype(tmp_path, arch, dtype, method):
    model = _half_model(tmp_path, arch, dtype)
    report = sz.compress(model, sz.config.CONFIGS[method](ratio=0.6), calib(), progress=False)
    assert report.dtype == str(dtype).removeprefix("torch.")
    lows = [m for m in model.modules() if isinstance(m, sz.LowRankLinear)]
    assert lows and all(m.A.dtype == m.B.dtype == dtype for m in lows)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    sz.save_compressed(model, tmp_path / "out", report=report)
    loaded = sz.load_compressed(tmp_path / "out")  # no dtype given: the saved one
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    with torch.no_grad():
        a, b = model(calib(2)).logits, loaded(calib(2)).logits
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_statistics_of_a_bf16_model_are_fp64_sums_of_its_activations(tmp_path):
    model = _half_model(tmp_path, "llama", torch.bfloat16)
    cfg = sz.SVDLLMConfig(ratio=0.6, targets=("*.0.self_attn.q_proj",))
    stats = sz.collect_statistics(model, cfg, calib(), progress=False)
    g = stats["model.layers.0.self_attn.q_proj"]["gram"]
    assert g.dtype == torch.float64
    xs = []
    h = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: xs.append(a[0]))
    with torch.no_grad():
        for row in calib():
            model(row[None])
    h.remove()
    X = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double()
    torch.testing.assert_close(g, X.T @ X, rtol=1e-10, atol=1e-10)


def test_half_factors_error_is_that_of_the_stored_factors(tmp_path):
    model = _half_model(tmp_path, "llama", torch.bfloat16)
    W = model.model.layers[0].mlp.up_proj.weight.detach().double().clone()
    report = sz.compress(model, sz.SVDConfig(ratio=0.6), calib(), progress=False)
    low = model.model.layers[0].mlp.up_proj
    rec = next(m for m in report.modules if m.name == "model.layers.0.mlp.up_proj")
    expect = float((W - low.A.double() @ low.B.double()).norm() / W.norm())
    assert rec.rel_error == pytest.approx(expect, rel=1e-9)


def test_balance_keeps_the_product_and_evens_the_factors(gen):
    A = torch.randn(40, 6, generator=gen, dtype=torch.float64) * 1e-3
    B = torch.randn(6, 30, generator=gen, dtype=torch.float64) * 1e6
    A2, B2 = dtypes.balance(A, B)
    torch.testing.assert_close(A2 @ B2, A @ B, rtol=1e-12, atol=0)
    torch.testing.assert_close(A2.abs().amax(0), B2.abs().amax(1), rtol=1e-12, atol=0)


def test_fp16_overflowing_split_is_balanced_into_range(gen):
    A = torch.randn(40, 6, generator=gen, dtype=torch.float64) * 1e-3
    B = torch.randn(6, 30, generator=gen, dtype=torch.float64) * 1e6  # > 65504: inf in fp16
    assert not torch.isfinite(B.half()).all()
    A2, B2, balanced = dtypes.to_storage(A, B, torch.float16, "blk.q_proj")
    assert balanced and torch.isfinite(A2.half()).all() and torch.isfinite(B2.half()).all()
    A3, B3, again = dtypes.to_storage(A, B, torch.float32, "blk.q_proj")
    assert not again and A3 is A and B3 is B  # fits: the method's own split is kept


def test_fp16_factor_beyond_range_raises_with_the_module_name(gen):
    A = torch.full((8, 2), 1e5, dtype=torch.float64)
    B = torch.full((2, 8), 1e5, dtype=torch.float64)
    with pytest.raises(OverflowError, match="blk.7.mlp.down_proj.*float16"):
        dtypes.to_storage(A, B, torch.float16, "blk.7.mlp.down_proj", float((A @ B).abs().max()))


def test_fp16_compress_names_the_module_whose_factors_overflow(tmp_path, monkeypatch):
    model = _half_model(tmp_path, "llama", torch.float16)
    method = methods.get("svd")
    calls = []

    def overflowing(jobs, cfg):  # block 1's gate_proj (5th target: q, k, v, o, gate, up, down)
        out = method.decompose_many(jobs, cfg)
        if len(calls) == 1:
            A, B = out[4]
            out[4] = (A * 1e9, B * 1e9)
        calls.append(len(jobs))
        return out

    monkeypatch.setitem(methods.METHODS, "svd", dataclasses.replace(method, decompose_many=overflowing))
    with pytest.raises(OverflowError, match=r"model\.layers\.1\.mlp\.gate_proj.*float16"):
        sz.compress(model, sz.SVDConfig(ratio=0.6), progress=False)
    assert isinstance(model.model.layers[1].mlp.gate_proj, torch.nn.Linear)  # not swapped in
    assert all(torch.isfinite(p).all() for p in model.parameters())
