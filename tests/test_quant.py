"""Bytes: packed codes, the integer kernels against the dequantised reference, the quantized
base + low-rank correction against its alternatives, error-aware factor quantization, and
quantized models that save, load and offload bit for bit."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import svdzip as sz
from svdzip import methods
from svdzip.config import BASE_BITS, FACTOR_BITS, GROUP_SIZES, SVDConfig, SVDLLMConfig, build_config
from svdzip.nn import QuantLowRankLinear, QuantMatrix, packing
from svdzip.nn.quant_lowrank import layer_bits
from svdzip.offload import compress_checkpoint
from svdzip.pipeline.checkpoint import Checkpoint
from svdzip.pipeline.quantize import refit_left

from tiny_models import calib, tiny

TESTS = Path(__file__).resolve().parent
QUANT_BITS = packing.BITS
SHAPES = [(7, 100), (40, 576), (230, 64), (16, 33)]


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("cols", [1, 5, 77, 128])
def test_packing_round_trips_and_costs_its_bits(bits, cols):
    codes = torch.randint(0, 1 << bits, (6, cols), generator=torch.Generator().manual_seed(bits))
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (6, (cols * bits + 7) // 8)
    assert torch.equal(packing.unpack(packed, bits, cols), codes.to(torch.uint8))
    with pytest.raises(ValueError, match="outside"):
        packing.pack(codes + (1 << bits), bits)


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("shape", SHAPES)
def test_rtn_error_is_within_half_a_step_and_kernel_equals_reference(bits, shape):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(*shape, generator=gen)
    q = QuantMatrix.from_float(W, bits, 32)
    D = q.dequantize(torch.float64)
    step = q.scale.double()[:, None] if bits == 8 else q.scale.double().repeat_interleave(32, 1)[:, : shape[1]]
    assert ((D - W.double()).abs() <= step / 2 + 1e-3 * step).all()
    x = torch.randn(3, 5, shape[1], generator=gen)
    with torch.no_grad():
        y = q(x)
    ref = x.double() @ D.T
    assert y.shape == (3, 5, shape[0])
    # bf16 activations and bf16 scales in the kernel: ~3e-3 relative
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-2


def test_kernel_reads_tensors_at_any_address_and_follows_changed_codes():
    q = QuantMatrix.from_float(torch.randn(32, 64), 8, 32)
    x = torch.randn(4, 64)
    with torch.no_grad():
        y0 = q(x)
        storage = torch.zeros(32 * 64 + 3, dtype=torch.int8)
        q.codes = storage[3:].view(32, 64)  # misaligned, as a tensor read from a file can be
        q.codes.copy_(QuantMatrix.from_float(torch.randn(32, 64), 8, 32).codes)
        y1 = q(x)
    assert not torch.allclose(y0, y1)
    assert torch.allclose(y1.double(), x.double() @ q.dequantize(torch.float64).T, rtol=2e-2, atol=5e-2)


def test_bad_formats_and_values_are_named():
    with pytest.raises(ValueError, match="bits = 5"):
        QuantMatrix(4, 4, 5)
    with pytest.raises(ValueError, match="group_size = 100"):
        QuantMatrix(4, 4, 4, 100)
    with pytest.raises(FloatingPointError, match="layer.q: cannot quantize"):
        QuantMatrix.from_float(torch.tensor([[1.0, float("nan")]]), 8, 32, "layer.q")
    with pytest.raises(OverflowError, match="layer.q"):
        QuantMatrix.from_float(torch.tensor([[1e9, -1e9]]), 4, 32, "layer.q")
    for field, bad in (("factor_bits", 5), ("base_bits", 1), ("group_size", 100)):
        with pytest.raises(ValueError, match=field):
            build_config("svd_llm", **{field: bad})
    with pytest.raises(ValueError, match="refine_epochs"):
        build_config("svd_llm", factor_bits=8, sequential=True, refine_epochs=1)
    with pytest.raises(ValueError, match="compensated' with a quantized base ruins the model"):
        build_config("svd_llm", base_bits=4, sequential=True, objective="compensated")


def _whitened_problem(seed=0, m=48, n=64):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, dtype=torch.float64, generator=gen)
    mix = torch.randn(n, n, dtype=torch.float64, generator=gen) * torch.logspace(0, -2, n, dtype=torch.float64)
    X = torch.randn(400, n, dtype=torch.float64, generator=gen) @ mix  # correlated, badly scaled inputs
    return W, X, {"gram": X.T @ X}


def test_correction_of_a_quantized_base_beats_the_base_and_the_plain_svd_and_is_optimal():
    W, X, stats = _whitened_problem()
    base = QuantMatrix.from_float(W, 3, 32)
    R = W - base.dequantize(torch.float64)
    err = lambda D: float(torch.linalg.norm(D @ X.T))  # noqa: E731
    k = 8
    meth = methods.get("svd_llm")
    A, B = meth.decompose(R, meth.prepare(stats, SVDLLMConfig()), k, SVDLLMConfig())
    plain = methods.get("svd")
    A2, B2 = plain.decompose(R, plain.prepare(stats, SVDConfig()), k, SVDConfig())
    ours = err(R - A @ B)
    assert ours < 0.9 * err(R)                # better than the base alone
    assert ours < 0.95 * err(R - A2 @ B2)     # better than the plain SVD of the residual
    # brute force: the best rank-k fit in the X-metric is the truncation of R·Xᵀ's singular values
    assert ours == pytest.approx(float(torch.linalg.svdvals(R @ X.T)[k:].norm()), rel=1e-8)


@pytest.mark.parametrize("bits", [b for b in FACTOR_BITS if b < 16])
def test_error_aware_factor_quantization_beats_rounding_both(bits):
    W, X, stats = _whitened_problem(1)
    meth = methods.get("svd_llm")
    A, B = meth.decompose(W, meth.prepare(stats, SVDLLMConfig()), 16, SVDLLMConfig())
    deq = lambda M: QuantMatrix.from_float(M, bits, 32).dequantize(torch.float64)  # noqa: E731
    naive = deq(A) @ deq(B)
    B_hat = deq(B)
    aware = deq(refit_left(W, B_hat, stats["gram"])) @ B_hat
    err = lambda P: float(torch.linalg.norm((W - P) @ X.T))  # noqa: E731
    assert err(aware) < err(naive)


QUANT_CONFIGS = [(f, b) for f in FACTOR_BITS for b in BASE_BITS if (f, b) != (16, 0) and b in (0, 3, 8)]


@pytest.mark.parametrize("factor_bits,base_bits", QUANT_CONFIGS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_quantized_model_saves_and_loads_bit_for_bit(tmp_path, arch, factor_bits, base_bits):
    model = tiny(arch)
    cfg = build_config("svd_llm", ratio=0.1 if base_bits else 0.6, factor_bits=factor_bits, base_bits=base_bits,
                       group_size=GROUP_SIZES[0])
    with pytest.warns(UserWarning, match="calibration"):
        rep = sz.compress(model, cfg, calib(), progress=False)
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLowRankLinear)
    bits = rep.bits_per_weight()
    assert bits is not None and "bits per targeted weight" in rep.summary()
    sz.save_compressed(model, tmp_path / "out", report=rep)
    ids = calib(2, 16)
    loaded = [sz.load_compressed(tmp_path / "out"), AutoModelForCausalLM.from_pretrained(tmp_path / "out")]
    with torch.no_grad():
        want = model(ids).logits
        for m in loaded:
            assert torch.equal(m(ids).logits, want)
    state = model.state_dict()
    for m in loaded:
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    # stored bits: what the files hold for the targets
    ckpt = Checkpoint(tmp_path / "out")
    names = [n for n in ckpt.files if any(n.startswith(t.name + ".") for t in rep.modules) and not n.endswith("bias")]
    stored = sum(ckpt.read(n).numel() * ckpt.read(n).element_size() * 8 for n in names)
    assert stored == pytest.approx(bits * sum(t.shape[0] * t.shape[1] for t in rep.modules), rel=1e-9)


def test_offloaded_quantized_run_equals_in_memory(tmp_path):
    cfg = build_config("svd_llm", ratio=0.1, factor_bits=8, base_bits=4, group_size=32, sequential=True)
    model = tiny("qwen2")
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.warns(UserWarning):
        rep = sz.compress(model, cfg, calib(), progress=False)
    sz.save_compressed(model, tmp_path / "mem", report=rep)
    with pytest.warns(UserWarning):
        compress_checkpoint(tmp_path / "ckpt", tmp_path / "off", cfg, calib(), progress=False)
    a, b = Checkpoint(tmp_path / "mem"), Checkpoint(tmp_path / "off")
    assert set(a.files) == set(b.files)
    assert all(torch.equal(a.read(n), b.read(n)) for n in a.files)


def test_rank_map_with_an_unknown_bit_width_is_refused_by_name(tmp_path):
    model = tiny("llama")
    with pytest.warns(UserWarning):
        sz.compress(model, build_config("svd_llm", ratio=0.6, factor_bits=8, group_size=32), calib(), progress=False)
    sz.save_compressed(model, tmp_path / "out")
    cfg = tmp_path / "out" / "config.json"
    cfg.write_text(cfg.read_text().replace('"factor_bits": 8', '"factor_bits": 6'))
    with pytest.raises(ValueError, match=r"module model\.layers\.\d+\.\w+\.\w+_proj: factor_bits = 6"):
        sz.load_compressed(tmp_path / "out", verify=False)


def test_cli_refuses_a_bit_width_it_does_not_have(tmp_path):
    r = subprocess.run([sys.executable, "-m", "svdzip", "compress", "smollm2-135m", str(tmp_path / "o"),
                        "--factor-bits", "5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--factor-bits" in r.stderr and "16, 8, 4" in r.stderr


GPTQ_TINY = TESTS / "data" / "gptq_tiny_w3g32"  # real llm-compressor output (its README says how)


def test_compressed_tensors_base_reads_llm_compressors_own_weights():
    from safetensors.torch import load_file
    from svdzip.pipeline.ctbase import checkpoint_format, read_base

    assert checkpoint_format(GPTQ_TINY) == (3, 32)
    for name, want in load_file(GPTQ_TINY / "dequantized.safetensors").items():
        module = name.removesuffix(".weight")
        got = read_base(GPTQ_TINY, module, tuple(want.shape), 3, 32).dequantize(torch.float64)
        # fp16 scales: each scale moves by <= 2^-11 of itself, times |code| <= 4, and a scale is <= max|w| / 3
        assert (got - want.double()).abs().max() <= want.abs().max() * 2 ** -9
        assert (got - want.double()).norm() < 1e-3 * want.norm()
    with pytest.raises(ValueError, match="3 bits, group 32; the config says base_bits=4"):
        read_base(GPTQ_TINY, "model.layers.0.self_attn.q_proj", (64, 64), 4, 32)
    with pytest.raises(ValueError, match="lm_head is not quantized there"):
        read_base(GPTQ_TINY, "lm_head", (128, 64), 3, 32)
    with pytest.raises(ValueError, match=r"shape \(64, 64\) there but \(64, 32\)"):
        read_base(GPTQ_TINY, "model.layers.0.self_attn.q_proj", (64, 32), 3, 32)


def test_correction_on_a_gptq_base_lowers_the_error_of_gptq_alone(tmp_path):
    from svdzip.pipeline.ctbase import read_base

    model, ref = tiny("llama", 2), tiny("llama", 2)
    cfg = build_config("svd_llm", ratio=0.1, factor_bits=8, base_bits=3, group_size=32, base_from=str(GPTQ_TINY))
    sz.compress(model, cfg, calib(8, 32), progress=False)
    layer = model.model.layers[1].self_attn.q_proj
    W = ref.model.layers[1].self_attn.q_proj.weight.double()
    gptq = read_base(GPTQ_TINY, "model.layers.1.self_attn.q_proj", (64, 64), 3, 32).dequantize(torch.float64)
    assert torch.equal(layer.base.dequantize(torch.float64), gptq)
    assert (W - layer.effective_weight()).norm() < 0.95 * (W - gptq).norm()
    sz.save_compressed(model, tmp_path / "out")
    with torch.no_grad():
        ids = calib(2, 16)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits, model(ids).logits)


def test_a_checkpoint_of_another_format_is_refused_by_name(tmp_path):
    import shutil

    from svdzip.pipeline.ctbase import checkpoint_format

    bad = tmp_path / "bad"
    shutil.copytree(GPTQ_TINY, bad)
    text = (bad / "config.json").read_text()
    (bad / "config.json").write_text(text.replace('"pack-quantized"', '"marlin-24"'))
    with pytest.raises(ValueError, match="format 'marlin-24' is not supported"):
        checkpoint_format(bad)


@pytest.mark.parametrize("factor_bits", [b for b in FACTOR_BITS if b < 16])
@pytest.mark.parametrize("base_bits", [0, 3])
@pytest.mark.parametrize("rank", [1, 19, 48])
def test_low_rank_kernel_path_equals_the_dequantised_layer(factor_bits, base_bits, rank):
    gen = torch.Generator().manual_seed(rank)
    m, n = 80, 96
    W = torch.randn(m, n, generator=gen)
    spec = {"rank": rank, "in_features": n, "out_features": m, "bias": True, "factor_bits": factor_bits,
            "base_bits": base_bits, "group_size": 32}
    base = QuantMatrix.from_float(W, base_bits, 32) if base_bits else None
    A, B = torch.randn(m, rank, generator=gen), torch.randn(rank, n, generator=gen)
    layer = QuantLowRankLinear.from_parts(spec, A, B, base, torch.randn(m, generator=gen), torch.float32)
    x = torch.randn(2, 7, n, generator=gen)
    with torch.no_grad():
        y = layer(x)
    ref = x.double() @ layer.effective_weight().T + layer.bias.double()
    assert y.shape == (2, 7, m) and y.dtype == torch.float32
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-2  # bf16 activations between the kernels
    x.requires_grad_(True)
    y_ref_path = layer(x)  # autograd: the dequantised reference path
    assert float((y_ref_path.double() - ref).norm() / ref.norm()) < 1e-6


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_gptq_base_has_a_lower_output_error_than_rounding(bits):
    from svdzip.nn.gptq import gptq_quantize

    W, X, stats = _whitened_problem(2, m=40, n=160)
    out_err = lambda D: float(torch.linalg.norm(D @ X.T))  # noqa: E731
    rtn = QuantMatrix.from_float(W, bits, 32).dequantize(torch.float64)
    q = gptq_quantize(W, stats["gram"], bits, 32)
    gptq = q.dequantize(torch.float64)
    assert out_err(W - gptq) < 0.9 * out_err(W - rtn)
    with torch.no_grad():  # the same format: the kernels run it
        x = torch.randn(3, 160, dtype=torch.float32)
        assert torch.allclose(q(x).double(), x.double() @ gptq.T, rtol=3e-2, atol=3e-2 * float(gptq.abs().max()))


def test_gptq_base_in_the_pipeline_beats_rtn_base():
    def run(method):
        model = tiny("llama", 2)
        cfg = build_config("svd_llm", ratio=0.05, base_bits=3, base_method=method, factor_bits=8, group_size=32)
        return sz.compress(model, cfg, calib(8, 32), progress=False)
    rtn, gptq = run("rtn"), run("gptq")
    mean = lambda rep: sum(m.out_rel_error for m in rep.modules) / len(rep.modules)  # noqa: E731
    assert mean(gptq) < mean(rtn)
    with pytest.raises(ValueError, match="base_method = 'gptq' rounds svdzip's own base"):
        build_config("svd_llm", base_method="gptq")


@pytest.mark.parametrize("bits", [b for b in BASE_BITS if b])  # 0 = no base
def test_a_base_alone_runs_as_its_dequantised_weight(bits):
    W, b, x = torch.randn(24, 64), torch.randn(24), torch.randn(3, 64)
    base = QuantMatrix.from_float(W, bits, 32, "w")
    layer = QuantLowRankLinear.base_only(base, b, torch.float32)
    assert layer.rank == 0 and layer.stored_bits() == layer_bits(24, 64, 0, 16, bits, 32)
    # the integer kernels take bf16 activations
    torch.testing.assert_close(layer(x), x @ base.dequantize(torch.float32).T + b, rtol=2e-2, atol=0.1)
