"""allocation="loss": whitened spectra x importance, the budget solved without trials."""
import math

import pytest
import torch

import svdzip as sz
from svdzip import allocation, rank
from svdzip.pipeline.source import InMemory
from svdzip.pipeline.spectra import whitened_spectra
from svdzip.pipeline.walk import find_targets

from tiny_models import calib, random_spectra, tiny


def _params(shapes, ratios):
    return sum(allocation.params_at_ratio(shapes[n], r) for n, r in ratios.items())


def test_flatter_spectrum_gets_the_larger_rank_and_the_budget_is_met():
    shapes = {"flat": (64, 48), "steep": (64, 48)}
    k = torch.arange(48, dtype=torch.float64)
    spectra = {"flat": torch.ones(48, dtype=torch.float64), "steep": 0.7 ** k}
    budget = math.floor(0.5 * 2 * 64 * 48)
    ratios = allocation.allocate_loss(spectra, {"flat": 1.0, "steep": 1.0}, shapes, budget)
    ranks = {n: rank.rank_for_ratio(*shapes[n], r) for n, r in ratios.items()}
    assert ranks["flat"] > ranks["steep"]
    used = _params(shapes, ratios)
    assert used <= budget and budget - used < 64 + 48  # tight: not one more rank unit fits


def test_importance_moves_rank_to_the_important_module():
    shapes = {"a": (32, 32), "b": (32, 32)}
    spectra = {"a": torch.linspace(2, 1, 32, dtype=torch.float64), "b": torch.linspace(2, 1, 32, dtype=torch.float64)}
    budget = 32 * 32
    ratios = allocation.allocate_loss(spectra, {"a": 10.0, "b": 1.0}, shapes, budget)
    assert rank.rank_for_ratio(32, 32, ratios["a"]) > rank.rank_for_ratio(32, 32, ratios["b"])


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_exhaustive_search_on_small_problems(seed):
    shapes = {"a": (8, 6), "b": (10, 5), "c": (7, 7)}
    spectra, w = random_spectra(shapes, seed)
    budget = int(0.5 * sum(m * n for m, n in shapes.values()))

    def loss(name, k):
        m, n = shapes[name]
        return 0.0 if k is None else w[name] * float(spectra[name][k:].sum())

    def options(name):
        m, n = shapes[name]
        return [(k, k * (m + n)) for k in range(1, (m * n) // (m + n) + 1)] + [(None, m * n)]

    best = min(sum(loss(nm, k) for nm, (k, _) in zip(shapes, combo))
               for combo in __import__("itertools").product(*(options(n) for n in shapes))
               if sum(c for _, c in combo) <= budget)
    ratios = allocation.allocate_loss(spectra, w, shapes, budget)
    got = sum(loss(n, None if r >= 1 else rank.rank_for_ratio(*shapes[n], r)) for n, r in ratios.items())
    assert _params(shapes, ratios) <= budget
    assert got <= best * (1 + 1e-9) + 1e-12 or got - best < 0.05 * best  # greedy: optimal up to the last item


def test_min_ratio_floor_keeps_every_module_above_it_and_meets_the_budget():
    shapes = {"flat": (64, 48), "steep": (64, 48)}
    k = torch.arange(48, dtype=torch.float64)
    spectra = {"flat": torch.ones(48, dtype=torch.float64), "steep": 0.5 ** k}
    budget = math.floor(0.6 * 2 * 64 * 48)
    free = allocation.allocate_loss(spectra, {}, shapes, budget)
    assert rank.rank_for_ratio(64, 48, free["steep"]) < rank.rank_for_ratio(64, 48, 0.4)  # drained
    floored = allocation.allocate_loss(spectra, {}, shapes, budget, min_ratio=0.4)
    assert rank.rank_for_ratio(64, 48, floored["steep"]) == rank.rank_for_ratio(64, 48, 0.4)
    assert rank.rank_for_ratio(64, 48, floored["flat"]) > rank.rank_for_ratio(64, 48, 0.4)
    used = _params(shapes, floored)
    assert used <= budget and budget - used < 64 + 48
    with pytest.raises(ValueError, match="min_ratio=0.9"):
        allocation.allocate_loss(spectra, {}, shapes, budget, min_ratio=0.9)


def test_block_weights_share_one_scale_per_block_and_follow_its_fisher():
    spectra = {"b0.q": torch.tensor([4.0, 1.0]), "b0.v": torch.tensor([1.0, 1.0]), "b1.q": torch.tensor([2.0, 2.0])}
    blocks = {"b0.q": 0, "b0.v": 0, "b1.q": 1}
    fisher = {"b0.q": 1e-4, "b0.v": 1e-2, "b1.q": 1e-3}
    w = allocation.module_weights("block", fisher, spectra, blocks)
    e0 = (1e-4 * 5 + 1e-2 * 2) / 2  # block 0's mean of F·Σσ²
    assert w["b0.q"] == pytest.approx(e0 / 5) and w["b0.v"] == pytest.approx(e0 / 2)
    assert w["b1.q"] == pytest.approx(1e-3)  # alone in its block: its own F
    rel = allocation.module_weights("relative", {}, spectra, blocks)
    assert rel["b0.q"] == pytest.approx(1 / 5)
    assert allocation.module_weights("fisher", fisher, spectra, blocks) == fisher


def test_ratio_for_rank_inverts_rank_for_ratio():
    for m, n in [(576, 576), (1536, 576), (192, 576), (7, 3)]:
        for k in {1, 2, 17, (m * n) // (m + n)} - {k for k in (17,) if k > (m * n) // (m + n)}:
            assert rank.rank_for_ratio(m, n, allocation.ratio_for_rank(m, n, k)) == k
    with pytest.raises(ValueError, match="outside"):
        allocation.ratio_for_rank(7, 3, 3)


def test_spectra_give_each_module_its_whitened_truncation_loss():
    model, ids = tiny("llama"), calib(8, 32)
    cfg = sz.SVDLLMConfig(ratio=0.5)
    _, targets = find_targets(model, cfg)
    spectra = whitened_spectra(InMemory(model), targets, ids, cfg, progress=False)
    assert set(spectra) == {t.name for t in targets}
    stats = sz.api.collect_statistics(tiny("llama"), cfg, ids, progress=False)
    for t in targets[:7]:  # block 0: truncating at k leaves exactly the tail of the spectrum
        W = t.module.weight.detach().double()
        G = stats[t.name]["gram"]
        from svdzip.methods.weighting import truncate, whitened
        A, B = truncate(W, 5, whitened(G, cfg.calibration.jitter))
        D = W - A @ B
        assert torch.isclose(torch.trace(D @ G @ D.T), spectra[t.name][5:].sum(), rtol=1e-6)


@pytest.mark.parametrize("importance", ["probe", "block", "fisher", "relative"])
def test_loss_allocation_compresses_within_the_budget(importance):
    model, ids = tiny("qwen2"), calib(8, 32)
    rep = sz.compress(model, sz.build_config("nsvd", ratio=0.6, allocation="loss", loss_importance=importance,
                                           loss_windows=3), ids, progress=False)
    assert rep.allocation["kind"] == "loss" and rep.allocation["importance"] == importance
    assert 0.58 < rep.ratio_targets < 0.61  # (q/k/v biases count in the report, not in the budget)
    _, targets = find_targets(tiny("qwen2"), sz.NSVDConfig())
    used = _params({t.name: t.shape for t in targets}, rep.allocation["ratios"])
    assert rep.allocation["budget_params"] - (64 + 64) < used <= rep.allocation["budget_params"]
    assert len(set(rep.allocation["ratios"].values())) > 1  # not uniform
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_loss_allocation_config_errors(tmp_path):
    with pytest.raises(ValueError, match="loss_importance"):
        sz.build_config("svd_llm", allocation="loss", loss_importance="gradient")
    with pytest.raises(ValueError, match="loss_windows"):
        sz.build_config("svd_llm", allocation="loss", loss_windows=0)
    with pytest.raises(ValueError, match="loss_probe_windows"):
        sz.build_config("svd_llm", allocation="loss", loss_probe_windows=0)
    with pytest.raises(ValueError, match="loss_probe_ratio"):
        sz.build_config("svd_llm", allocation="loss", loss_probe_ratio=1.5)


@pytest.mark.parametrize("chunk", [5, 64])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_blockwise_block_output_fisher_equals_the_whole_model_backward(tmp_path, monkeypatch, arch, chunk):
    """Out of core the loss allocation's block-output Fisher comes from a block-wise backward
    (pipeline/fisher.py), the LM head run on `chunk` tokens at a time (16-token windows: 4
    slices, the last of one token; or one); it equals the in-memory one, and leaves no
    gradients behind."""
    from svdzip.pipeline import fisher, replay
    from svdzip.pipeline.fisher import block_output_fisher, block_output_fisher_blockwise
    from svdzip.pipeline.source import InMemory

    monkeypatch.setattr(fisher, "LOSS_CHUNK", chunk)
    model, ids = tiny(arch), calib(3, 16)
    whole = block_output_fisher(model, ids, progress=False)
    source = InMemory(model)
    hidden, args = replay.capture(model, source.layers, ids)
    got = block_output_fisher_blockwise(source, {1, 2}, hidden, args, ids, tmp_path / "spill", progress=False)
    assert set(got) == {1, 2} and not (tmp_path / "spill").exists()
    for b, f in got.items():
        torch.testing.assert_close(f, whole[b], rtol=1e-6, atol=0)
        assert f.min() > 0
    assert all(p.grad is None for p in model.parameters())


def test_block_output_fisher_is_the_squared_loss_gradient_at_each_block_output():
    from svdzip.pipeline.fisher import block_output_fisher
    from svdzip.pipeline.walk import decoder_layers

    model, ids = tiny("llama"), calib(3, 16)
    got = block_output_fisher(model, ids, progress=False)
    layers = decoder_layers(model)
    assert sorted(got) == list(range(len(layers)))
    want = [torch.zeros_like(got[0]) for _ in layers]
    outs = []
    hooks = [l.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o)) for l in layers]
    try:
        for row in ids:
            outs.clear()
            x = row.unsqueeze(0)
            loss = model(x, labels=x, use_cache=False).loss
            grads = torch.autograd.grad(loss, outs)
            for b, g in enumerate(grads):
                want[b] += g.double().square().sum((0, 1))
    finally:
        for h in hooks:
            h.remove()
    for b in range(len(layers)):
        assert torch.allclose(got[b], want[b], rtol=1e-5, atol=1e-12), b
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # no weight gradients left


def test_probe_scores_what_the_truncation_does_at_the_block_output():
    from svdzip.pipeline.fisher import block_output_fisher
    from svdzip.pipeline.spectra import Probe

    model, ids = tiny("llama"), calib(8, 32)
    cfg = sz.SVDLLMConfig(ratio=0.5)
    _, targets = find_targets(model, cfg)
    # q_proj of block 0 made exactly rank 1: its probe truncation (rank > 1) changes nothing
    q = targets[0].module.weight
    with torch.no_grad():
        q.copy_(torch.outer(q[:, 0], q[0]))
    probe = Probe(block_output_fisher(model, ids[:4], progress=False), windows=2, ratio=0.5)
    spectra = whitened_spectra(InMemory(model), targets, ids, cfg, progress=False, probe=probe)
    assert set(probe.scores) == set(spectra) and probe.ranks[targets[0].name] > 1
    assert probe.scores[targets[0].name] == pytest.approx(0.0, abs=1e-12)
    assert all(v > 0 for n, v in probe.scores.items() if n != targets[0].name)
    w = allocation.probe_weights(probe.scores, probe.ranks, spectra)
    assert w[targets[0].name] == 0.0 and all(v > 0 for n, v in w.items() if n != targets[0].name)
    # a second run gives the same scores, and the weights did not change
    again = Probe(probe.fisher, windows=2, ratio=0.5)
    whitened_spectra(InMemory(model), targets, ids, cfg, progress=False, probe=again)
    assert again.scores == probe.scores
    # a larger probe rank drops less: smaller scores for every module that had something to drop
    finer = Probe(probe.fisher, windows=2, ratio=0.9)
    whitened_spectra(InMemory(model), targets, ids, cfg, progress=False, probe=finer)
    assert all(finer.scores[n] < probe.scores[n] for n in probe.scores if probe.scores[n] > 1e-9)


def test_probe_weights_price_the_dropped_energy():
    spectra = {"a": torch.tensor([4.0, 2.0, 1.0, 1.0]), "b": torch.tensor([3.0, 0.0, 0.0])}
    w = allocation.probe_weights({"a": 6.0, "b": 0.0}, {"a": 2, "b": 1}, spectra)
    assert w == {"a": 3.0, "b": 0.0}
