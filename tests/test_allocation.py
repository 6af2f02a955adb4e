"""Sensitivity-based rank allocation (ASVD): the budget, the trials, the cache, the config."""

import json

import pytest
import torch

import svdzip as sz
from svdzip.config import build_config
from svdzip import allocation, api
from svdzip.pipeline import replay, trials
from svdzip.pipeline.walk import find_targets

from tiny_models import calib, tiny

SHAPES = {"a": (64, 64), "b": (64, 64), "c": (128, 64)}


def _table():
    # a is insensitive, c is sensitive, b in between; ppl falls as the ratio rises.
    base = {"a": 10.0, "b": 12.0, "c": 30.0}
    return {n: {r: base[n] * (1 + (1 - r)) ** 2 for r in (0.4, 0.6, 0.8)} for n in SHAPES}


def test_allocate_meets_budget_and_is_tight():
    table = _table()
    dense = sum(m * n for m, n in SHAPES.values())
    for frac in (0.45, 0.6, 0.8):
        budget = int(frac * dense)
        ratios = allocation.allocate(table, SHAPES, budget)
        total = sum(allocation.params_at_ratio(SHAPES[n], r) for n, r in ratios.items())
        assert total <= budget
        # one notch lower threshold would break the budget (the search found the lowest level)
        levels = sorted({p for v in table.values() for p in v.values()})
        th = max(p for n, r in ratios.items() for rr, p in table[n].items() if rr == r)
        lower = [p for p in levels if p < th]
        if lower:
            choice = {n: min([r for r, p in table[n].items() if p <= lower[-1]], default=1.0) for n in table}
            assert sum(allocation.params_at_ratio(SHAPES[n], r) for n, r in choice.items()) > budget
    ratios = allocation.allocate(table, SHAPES, int(0.6 * dense))
    assert ratios["a"] <= ratios["b"] <= ratios["c"], ratios  # insensitive layers give up more


def test_allocate_infeasible_budget_says_so():
    with pytest.raises(ValueError, match="cannot be met.*smallest candidate ratio 0.4"):
        allocation.allocate(_table(), SHAPES, 10)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_running_from_block_zero_reproduces_model_ppl(arch):
    model = tiny(arch)
    ids = calib(2, 20)
    layers, _ = find_targets(model, sz.SVDConfig())
    hidden, block_args = replay.capture(model, layers, ids)
    for layer, args in zip(layers, block_args):
        hidden = replay.run_block(layer, hidden, args)
    ppl = trials._perplexity(replay.head(model), hidden, ids, "cpu")
    with torch.no_grad():
        loss = torch.stack([model(r[None], labels=r[None]).loss for r in ids]).mean()
    assert ppl == pytest.approx(float(loss.exp()), rel=1e-5)


def test_sensitivity_compress_cache_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("SVDZIP_CACHE", str(tmp_path))
    cfg = sz.build_config("svd_llm", ratio=0.6, allocation="sensitivity", sensitivity_ratios=(0.3, 0.6, 0.9),
                          sensitivity_seqlen=16)
    model = tiny("llama")
    rep = sz.compress(model, cfg, calib(), progress=False)
    a = rep.allocation
    assert a["cached"] is False and a["kind"] == "sensitivity"
    assert rep.ratio_targets <= 0.6
    assert len(set(a["ratios"].values())) > 1, "sensitivity should not give every module the same ratio"
    ranks = {m.name: m.rank for m in rep.modules}
    assert all(n in ranks for n, r in a["ratios"].items() if r < 1)
    assert "allocation sensitivity" in rep.summary()
    files = list((tmp_path / "sensitivity").glob("*.json"))
    assert len(files) == 1
    # Second run: table from the cache, same ratios, same logits.
    model2 = tiny("llama")
    rep2 = sz.compress(model2, cfg, calib(), progress=False)
    assert rep2.allocation["cached"] is True and rep2.allocation["ratios"] == a["ratios"]
    with torch.no_grad():
        assert torch.equal(model(calib(1)).logits, model2(calib(1)).logits)
    # A damaged cache file is recomputed, not trusted.
    files[0].write_text("{broken")
    rep3 = sz.compress(tiny("llama"), cfg, calib(), progress=False)
    assert rep3.allocation["cached"] is False and rep3.allocation["ratios"] == a["ratios"]
    json.loads(files[0].read_text())


def test_sensitivity_key_changes_with_calibration(tmp_path):
    model = tiny("llama")
    cfg = sz.build_config("svd", allocation="sensitivity")
    _, targets = find_targets(model, cfg)
    weights = [(t.name, t.module.weight) for t in targets]
    k1 = allocation.cache_key(cfg, calib(2, 16), weights)
    k2 = allocation.cache_key(cfg, calib(2, 16) + 1, weights)
    k3 = allocation.cache_key(sz.build_config("svd", allocation="sensitivity", ratio=0.5), calib(2, 16), weights)
    k4 = allocation.cache_key(cfg, calib(2, 16), weights[:1] + [(weights[1][0], weights[1][1] * 2)] + weights[2:])
    assert k1 != k2 and k1 == k3 and k1 != k4  # the ratio does not change the trials; weights do
    # nor do the options the trials never read (a new loss_* option once made every table miss)
    other = sz.build_config("svd", allocation="sensitivity", loss_probe_ratio=0.7, loss_importance="block", refine_epochs=2,
                         sequential=True, compensation=0.5)
    assert allocation.cache_key(other, calib(2, 16), weights) == k1
    assert allocation.cache_key(sz.build_config("svd", allocation="sensitivity", sensitivity_windows=3), calib(2, 16),
                                weights) != k1


@pytest.mark.parametrize("kwargs,msg", [
    (dict(allocation="greedy"), "allocation = 'greedy' must be one of"),
    (dict(allocation="last_blocks"), "needs last_blocks=L"),
    (dict(sensitivity_ratios=()), "must not be empty"),
    (dict(sensitivity_ratios=(0.5, 1.5)), r"sensitivity_ratios entry = 1.5 must be a number in \(0, 1\]"),
    (dict(sensitivity_windows=0), "sensitivity_windows = 0 must be a positive integer"),
])
def test_allocation_config_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sz.build_config("svd", **kwargs)


def test_last_blocks_sets_allocation_and_sensitivity_needs_calibration():
    assert sz.build_config("svd", last_blocks=2).strategy == "last_blocks"
    assert sz.ResSVDConfig().strategy == "last_blocks" and sz.ResSVDConfig().allocation.strategy is None
    with pytest.raises(ValueError, match="needs calibration"):
        api.compress(tiny("llama"), sz.build_config("svd", allocation="sensitivity"), None, progress=False)


def test_sweep_groups_cover_every_target_block_within_the_memory():
    blocks = {1: ["q", "k"], 2: ["q"], 4: ["q", "k", "v"], 5: ["q"]}
    assert trials.sweep_groups(blocks, 2, 10, 1 << 40) == [(1, 6)]
    assert trials.sweep_groups(blocks, 2, 10, 60) == [(1, 4), (4, 5), (5, 6)]  # 40+20 | 60 | 20
    assert trials.sweep_groups(blocks, 2, 10, 1) == [(1, 2), (2, 4), (4, 5), (5, 6)]


@pytest.mark.parametrize("method", ["svd_llm", "nsvd", "asvd"])
def test_sweeps_of_any_size_give_the_same_table(method):
    """One sweep for every trial, or one per block (each rereading the blocks after it): the
    same perplexities, to the last bit, and the same dense perplexity."""
    from svdzip import methods
    from svdzip.config import CONFIGS
    from svdzip.pipeline.source import InMemory

    cfg = build_config(method, ratio=0.6, allocation="sensitivity", sensitivity_ratios=(0.3, 0.9), sensitivity_seqlen=16)
    model = tiny("qwen2")
    _, targets = find_targets(model, cfg)
    tokens = allocation.trial_slice(calib(), cfg)
    run = [trials.sweep_table(InMemory(model), targets, cfg, methods.get(method), calib(), tokens,
                              methods.required_stats(cfg), progress=False, trial_memory=m) for m in (1 << 40, 1)]
    assert [r["sweeps"] for r in run] == [1, 3]
    assert run[0]["ppl"] == run[1]["ppl"] and run[0]["dense_ppl"] == run[1]["dense_ppl"]
    ppl = [p for v in run[0]["ppl"].values() for p in v.values()]
    assert len(ppl) == 2 * len(targets) and len(set(ppl)) > len(targets)  # trials do differ


@pytest.mark.parametrize("name", sorted(allocation.STRATEGIES))
def test_a_strategys_fields_are_options_a_config_has(name):
    """`Strategy.fields` (what the strategy reads, docs/design.md) names flat options of some
    method's config: a renamed option cannot leave a stale name there."""
    from svdzip.config import CONFIGS

    options = {k for cls in CONFIGS.values() for k in cls(ratio=0.5).flat()}
    fields = allocation.STRATEGIES[name].fields
    assert "ratio" in fields and set(fields) <= options, set(fields) - options
