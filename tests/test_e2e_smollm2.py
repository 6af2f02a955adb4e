"""End to end on the real SmolLM2-135M with the protocol's calibration set (32 x 512 tokens
of the Wikipedia excerpt). The default run evaluates the first 16 wiki windows to stay at a
few minutes; the slow test uses the protocol's 60 windows and adds a sequential run."""

import pytest
import torch

import svdzip as sz
from svdzip import api, data, eval as ev, models


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(2)
    model, tok = models.load("smollm2-135m")
    calib = data.calibration_batches(tok, n_samples=32, seqlen=512)
    stats = api.collect_statistics(model, sz.SVDLLMConfig(), calib, kinds={"gram", "abs_mean"}, progress=False)
    return tok, calib, stats


def _ppl_after(method, stats, ids, **kw):
    model, _ = models.load("smollm2-135m")
    cfg = {"svd": sz.SVDConfig, "svd_llm": sz.SVDLLMConfig, "nsvd": sz.NSVDConfig,
           "ressvd": sz.ResSVDConfig}[method](ratio=0.8, **kw)
    rep = sz.compress(model, cfg, progress=False, stats=None if method == "svd" else stats)
    assert rep.ratio_targets <= 0.8 and rep.ratio_targets > 0.79
    return model, rep, ev.perplexity(model, ids, progress=False)


def test_whitened_methods_beat_plain_svd_by_100x_and_survive_save_load(smol, tmp_path):
    tok, _, stats = smol
    ids = data.windows(tok, data.wiki_text("eval"), 512, 16)
    ppl = {}
    for method in ("svd", "svd_llm", "nsvd", "ressvd"):
        model, rep, ppl[method] = _ppl_after(method, stats, ids)
        if method == "nsvd":
            out = sz.save_compressed(model, tmp_path / "nsvd", tokenizer=tok, report=rep)
            loaded, tok2 = models.load(str(out))
            assert ev.perplexity(loaded, ids, progress=False) == pytest.approx(ppl[method], rel=1e-6)
    print("ppl at ratio 0.8 (16 wiki windows):", ppl)
    for method in ("svd_llm", "nsvd", "ressvd"):
        assert ppl[method] * 100 <= ppl["svd"], ppl


@pytest.mark.slow
def test_full_protocol_and_sequential(smol):
    tok, calib, stats = smol
    ids = data.windows(tok, data.wiki_text("eval"), 512, 60)
    _, _, plain = _ppl_after("svd", stats, ids)
    _, _, oneshot = _ppl_after("nsvd", stats, ids)
    model, _ = models.load("smollm2-135m")
    sz.compress(model, sz.build_config("nsvd", ratio=0.8, sequential=True), calib, progress=False)
    seq = ev.perplexity(model, ids, progress=False)
    print(f"wiki ppl (60 windows) svd {plain:.1f}, nsvd one-shot {oneshot:.2f}, sequential {seq:.2f}")
    assert oneshot * 100 <= plain and seq * 100 <= plain
