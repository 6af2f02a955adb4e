"""compress() on tiny random models of three architectures: no model code copied."""

import pytest
import torch

import svdzip as sz
from svdzip import api, ops
from svdzip.config import CONFIGS, build_config
from svdzip.nn import LowRankLinear
from svdzip.pipeline import loop, replay
from svdzip.pipeline.walk import decoder_layers

from tiny_models import calib, tiny

ARCHS = ["llama", "qwen2", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("method", sorted(m for m in CONFIGS if m != "fwsvd"))  # fwsvd: one-shot only, below
def test_compress_every_architecture(arch, sequential, method):
    model = tiny(arch)
    ids = calib()
    cfg = build_config(method, ratio=0.6, sequential=sequential)
    rep = sz.compress(model, cfg, ids, progress=False)
    lowrank = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    n_blocks = len(decoder_layers(model))
    expected_blocks = n_blocks if method != "ressvd" else round(0.75 * n_blocks)
    assert len(lowrank) == len(rep.modules) == 7 * expected_blocks
    assert rep.ratio_targets <= 0.6 + 1e-9
    assert rep.model_params_after < rep.model_params_before
    out = model(ids[:1]).logits
    assert torch.isfinite(out).all()


def test_ressvd_budget_counts_all_blocks():
    model = tiny("llama", layers=4)
    before = sum(m.weight.numel() for l in decoder_layers(model) for m in l.modules()
                 if isinstance(m, torch.nn.Linear))
    rep = sz.compress(model, sz.ResSVDConfig(ratio=0.8, last_fraction=0.5), calib(), progress=False)
    assert {m.name.split(".")[2] for m in rep.modules} == {"2", "3"}
    assert rep.target_params_before == before  # the dense first blocks count as targets
    assert 0.75 < rep.ratio_targets <= 0.8 + 1e-9


def test_qwen2_biases_are_kept():
    model = tiny("qwen2")
    q = model.model.layers[0].self_attn.q_proj
    assert q.bias is not None
    bias = q.bias.detach().clone()
    sz.compress(model, sz.SVDLLMConfig(ratio=0.5), calib(), progress=False)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, bias)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_block_replay_reproduces_the_model(arch):
    model = tiny(arch)
    ids = calib(2)
    layers = decoder_layers(model)
    hidden, args = replay.capture(model, layers, ids)
    for layer, a in zip(layers, args):
        hidden = replay.run_block(layer, hidden, a)
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(torch.cat(hidden)))
        ref = model(ids).logits
    assert torch.allclose(logits, ref, atol=1e-5)


def test_gemma3_replay_from_a_middle_block_keeps_sliding_global_layers_and_softcapping():
    """Sequential replay and sensitivity trials run the model from a middle block through
    replay.head: sliding-window and global layers must each get their own mask and rotary
    embedding, and the final logit soft-capping must be applied."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=6,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           final_logit_softcapping=2.0)
    model = Gemma3ForCausalLM(cfg).eval()
    ids = calib(2)  # 24 tokens: past the sliding window, so the two layer kinds differ
    layers = decoder_layers(model)
    hidden, args = replay.capture(model, layers, ids)
    assert args[0][1]["attention_mask"] is not None
    for layer, a in zip(layers, args):
        hidden = replay.run_block(layer, hidden, a)
    with torch.no_grad():
        logits = replay.head(model)(torch.cat(hidden))
        ref = model(ids).logits
        uncapped = model.lm_head(model.model.norm(torch.cat(hidden)))
    assert torch.allclose(logits, ref, atol=1e-5)
    assert ref.abs().max() < 2.0 and not torch.allclose(uncapped, ref, atol=1e-3)
    sliding, full = args[0][1]["attention_mask"], args[1][1]["attention_mask"]
    assert full is None or not torch.equal(sliding, full)  # each layer kept its own mask


def test_one_gram_per_distinct_input():
    model = tiny("llama")
    stats = api.collect_statistics(model, sz.SVDLLMConfig(), calib(), progress=False)
    blk = "model.layers.1"
    g = lambda s: stats[f"{blk}.{s}"]["gram"]
    assert g("self_attn.q_proj") is g("self_attn.k_proj") is g("self_attn.v_proj")
    assert g("mlp.gate_proj") is g("mlp.up_proj")
    grams = {id(s["gram"]) for n, s in stats.items() if n.startswith(blk + ".")}
    assert len(grams) == 4
    assert stats[f"{blk}.self_attn.q_proj"]["tokens"] == calib().numel()


def test_fp32_gram_products_are_per_window_fp32_grams_summed_in_fp64():
    model, ids = tiny("llama"), calib()
    name = "model.layers.1.mlp.down_proj"
    windows = []
    handle = dict(model.named_modules())[name].register_forward_pre_hook(
        lambda m, a: windows.append(a[0].detach().reshape(-1, a[0].shape[-1]).clone()))
    try:
        fp64 = api.collect_statistics(model, sz.SVDLLMConfig(), ids, progress=False)[name]["gram"]
        fp32 = api.collect_statistics(model, sz.build_config("svd_llm", gram_products="fp32"), ids,
                                      progress=False)[name]["gram"]
    finally:
        handle.remove()
    windows = windows[len(windows) // 2:]  # the second collection's inputs
    assert len(windows) == ids.shape[0]
    expect = torch.zeros_like(fp64)
    for x in windows:
        expect += ops.gram_accumulate_(torch.zeros(x.shape[1], x.shape[1]), x).double()
    assert fp32.dtype == torch.float64
    assert torch.equal(fp32, expect)  # fp32 per window, fp64 across windows
    assert not torch.equal(fp32, fp64)
    assert torch.allclose(fp32, fp64, rtol=1e-5, atol=1e-6 * float(fp64.diagonal().max()))


def test_fp32_gram_products_compress_close_to_fp64():
    ids = calib()
    a, b = tiny("llama"), tiny("llama")
    sz.compress(a, sz.SVDLLMConfig(ratio=0.6), ids, progress=False)
    sz.compress(b, sz.build_config("svd_llm", ratio=0.6, gram_products="fp32"), ids, progress=False)
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-3)


def test_reported_output_error_is_measured_on_the_calibration_inputs():
    model, ids = tiny("llama"), calib()
    name = "model.layers.1.mlp.down_proj"
    dense = dict(model.named_modules())[name]
    W = dense.weight.detach().double().clone()
    inputs = []
    handle = dense.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().reshape(-1, W.shape[1])))
    with torch.no_grad():
        model(ids)
    handle.remove()
    rep = sz.compress(model, sz.SVDLLMConfig(ratio=0.5), ids, progress=False)
    low = dict(model.named_modules())[name]
    X = torch.cat(inputs).double()
    expect = float(((W - low.A.double() @ low.B.double()) @ X.T).norm() / (W @ X.T).norm())
    got = next(m.out_rel_error for m in rep.modules if m.name == name)
    assert 0.01 < expect < 1
    assert got == pytest.approx(expect, rel=1e-4)


def test_stats_reuse_matches_fresh_collection():
    ids = calib()
    a, b = tiny("llama"), tiny("llama")
    cfg = sz.NSVDConfig(ratio=0.6)
    stats = api.collect_statistics(b, cfg, ids, progress=False)
    sz.compress(a, cfg, ids, progress=False)
    sz.compress(b, cfg, progress=False, stats=stats)
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-6)


def test_sequential_fits_each_layer_to_the_compressed_models_inputs():
    """Sequential: block 2's q_proj is SVD-LLM's optimum for the inputs it sees in the compressed
    model (blocks 0-1 already compressed), which one-shot's (fitted to the dense inputs) is not."""
    ids = calib()
    dense_w = tiny("llama").model.layers[2].self_attn.q_proj.weight.detach().double()
    a, b = tiny("llama"), tiny("llama")
    sz.compress(a, sz.SVDLLMConfig(ratio=0.4), ids, progress=False)
    sz.compress(b, sz.build_config("svd_llm", ratio=0.4, sequential=True), ids, progress=False)
    seen = []
    q = b.model.layers[2].self_attn.q_proj
    handle = q.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().reshape(-1, 64)))
    with torch.no_grad():
        for row in ids:
            b(row.unsqueeze(0))
    handle.remove()
    X = torch.cat(seen).double()                       # what q_proj sees in the compressed model
    S = torch.linalg.cholesky(X.T @ X)
    sigma = torch.linalg.svdvals(dense_w @ S)
    optimum = float(sigma[q.rank:].square().sum().sqrt())

    def err(mod):
        return float(((dense_w - mod.A.detach().double() @ mod.B.detach().double()) @ X.T).norm())

    assert err(q) == pytest.approx(optimum, rel=1e-6)
    assert err(a.model.layers[2].self_attn.q_proj) > 1.01 * optimum


def test_rank_deficient_calibration_reports_fallback():
    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 6))  # 6 tokens < 64 channels: every Gram is singular
    rep = sz.compress(model, sz.SVDLLMConfig(ratio=0.5), ids, progress=False)
    assert len(rep.fallbacks()) == len(rep.modules)
    assert "whitening fallbacks: 21 modules" in rep.summary()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_weight_is_named():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"model.layers.1.mlp.up_proj: weight contains nan"):
        sz.compress(model, sz.SVDConfig(), progress=False)


def test_nan_activation_is_named_and_hooks_are_removed():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"model.layers.0.mlp.gate_proj: calibration statistic 'gram' contains nan"):
        sz.compress(model, sz.SVDLLMConfig(), calib(), progress=False)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())  # nothing half-swapped


def test_bad_calls():
    model = tiny("llama")
    with pytest.raises(ValueError, match=r"svd_llm needs calibration token ids of shape \(N, seqlen\)"):
        sz.compress(model, sz.SVDLLMConfig(), None, progress=False)
    with pytest.raises(ValueError, match="targets pattern '\\*nothing\\*' matches no Linear inside the decoder blocks"):
        sz.compress(model, sz.SVDConfig(targets=("*nothing*",)), progress=False)
    with pytest.raises(ValueError, match="no Linear layer in the decoder blocks matches"):  # each matches, none is left
        sz.compress(model, sz.SVDConfig(targets=("*q_proj",), ignore=("*proj",)), progress=False)
    with pytest.raises(TypeError, match="config must be a CompressConfig"):
        sz.compress(model, {"ratio": 0.5}, progress=False)


def test_fwsvd_runs_and_restores_grad_flags():
    model = tiny("llama")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rep = sz.compress(model, sz.FWSVDConfig(ratio=0.6), calib(2), progress=False)
    assert len(rep.modules) == 21
    assert {n: p.requires_grad for n, p in model.named_parameters() if n in flags} == \
        {n: f for n, f in flags.items() if n in dict(model.named_parameters())}


def test_row_fisher_matches_per_window_gradients():
    from svdzip.pipeline.fisher import row_fisher
    from svdzip.pipeline.walk import find_targets
    model = tiny("llama")
    ids = calib(3)
    _, targets = find_targets(model, sz.FWSVDConfig())
    got = row_fisher(model, targets, ids, progress=False)
    name, w = targets[0].name, targets[0].module.weight
    want = torch.zeros(w.shape[0], dtype=torch.float64)
    for row in ids:
        x = row[None]
        (g,) = torch.autograd.grad(model(x, labels=x).loss, [w.requires_grad_(True)])
        want += g.double().pow(2).sum(1)
    torch.testing.assert_close(got[name]["fisher"], want, rtol=1e-5, atol=0)
    assert got[name]["tokens"] == ids.numel()
    assert all(p.grad is None for p in model.parameters())


def test_row_fisher_recomputes_blocks_in_backward_and_restores_them():
    from svdzip.pipeline.fisher import row_fisher
    from svdzip.pipeline.walk import decoder_layers, find_targets
    model, ids = tiny("llama"), calib(2)
    _, targets = find_targets(model, sz.FWSVDConfig())
    runs = []
    handle = model.model.layers[1].mlp.register_forward_pre_hook(lambda m, a: runs.append(1))
    row_fisher(model, targets, ids, progress=False)
    handle.remove()
    assert len(runs) == 2 * ids.shape[0]  # forward + recompute in backward, per window
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))


def test_one_shot_streams_one_block_of_statistics_at_a_time(monkeypatch):
    from svdzip.calibration.collector import StatsCollector
    covered = []
    init = StatsCollector.__init__

    def spy(self, modules, kinds, *a, **kw):
        covered.append({n.split(".")[2] for n in modules})   # model.layers.<i>.…
        init(self, modules, kinds, *a, **kw)

    monkeypatch.setattr(StatsCollector, "__init__", spy)
    rep = sz.compress(tiny("llama"), sz.SVDLLMConfig(ratio=0.6), calib(), progress=False)
    assert covered == [{"0"}, {"1"}, {"2"}]
    assert len(rep.modules) == 21 and rep.seconds_stats > 0 and rep.seconds_decompose > 0


def test_replaced_dense_weights_are_freed_before_compress_returns():
    import weakref
    model = tiny("llama")
    ref = weakref.ref(model.model.layers[0].mlp.down_proj.weight)
    alive = []
    model.model.layers[2].register_forward_pre_hook(lambda *a: alive.append(ref() is not None))
    sz.compress(model, sz.SVDLLMConfig(ratio=0.6), calib(), progress=False)
    assert alive[0] and not alive[-1]   # alive in the dense capture pass, gone once block 0 is done


def test_freed_memory_goes_back_to_the_os_after_each_block(monkeypatch):
    import platform
    from svdzip.pipeline import memory
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim exists only in glibc")
    assert memory.release_freed_memory() is True
    calls = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda: calls.append(1))
    sz.compress(tiny("llama"), sz.SVDLLMConfig(ratio=0.6), calib(), progress=False)
    assert len(calls) == 3   # once per compressed block


@pytest.mark.parametrize("method", ["svd_llm", "nsvd"])
def test_owned_statistics_are_shrunk_without_changing_any_result(method):
    """The block loop lets apply_block drop each fp64 Gram for the fp32 copy its reported error
    uses (owned=True); a caller's statistics are left as they were (owned=False). Same factors,
    same reported errors, either way."""
    import copy

    from svdzip import methods
    from svdzip.pipeline.decompose import apply_block
    from svdzip.pipeline.walk import by_block, find_targets
    from svdzip.report import Report

    cfg = CONFIGS[method](ratio=0.6)
    runs = []
    for owned in (False, True):
        model = tiny("qwen2")
        _, targets = find_targets(model, cfg)
        stats = api.collect_statistics(model, cfg, calib(), progress=False)
        kept = copy.deepcopy(stats)
        report = Report(method, {})
        block = by_block(targets)[1]
        apply_block(block, stats, cfg, methods.get(method), report, owned=owned)
        grams = {stats[t.name]["gram"].dtype for t in block}
        assert grams == ({torch.float32} if owned else {torch.float64})
        if not owned:
            assert all(torch.equal(stats[n]["gram"], kept[n]["gram"]) for n in stats)
        runs.append((report.modules, [(m.A.clone(), m.B.clone()) for m in model.modules()
                                      if isinstance(m, LowRankLinear)]))
    (rep_a, fac_a), (rep_b, fac_b) = runs
    assert [(m.name, m.rank, m.out_rel_error) for m in rep_a] == [(m.name, m.rank, m.out_rel_error) for m in rep_b]
    assert len(fac_a) == 7 and all(torch.equal(a, b) for fa, fb in zip(fac_a, fac_b) for a, b in zip(fa, fb))
