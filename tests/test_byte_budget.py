"""Byte budgets (`bits`): the one count of stored bits, the uniform ratio that meets a budget, and
the loss allocation priced in stored bits (allocation/prices.py)."""

import itertools
import math
import subprocess
import sys

import pytest
import torch

import svdzip as sz
from svdzip import allocation, rank
from svdzip.allocation.prices import in_bits, top_lowrank
from svdzip.config import BASE_BITS, FACTOR_BITS, build_config
from svdzip.nn import spec_bits
from svdzip.nn.compressed import entries
from svdzip.nn.quant_lowrank import layer_bits
from svdzip.pipeline.quantize import layer_spec, ratio_for_bits
from svdzip.pipeline.walk import find_targets

from tiny_models import calib, random_spectra, tiny


@pytest.mark.parametrize("factor_bits", FACTOR_BITS)
@pytest.mark.parametrize("base_bits", BASE_BITS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_one_count_of_stored_bits_is_what_a_layer_holds(factor_bits, base_bits, dtype):
    for m, n, r in [(40, 96, 1), (40, 96, 17), (230, 64, 33), (64, 64, 64)]:
        spec = {"rank": r, "in_features": n, "out_features": m, "bias": True}
        if (factor_bits, base_bits) != (16, 0):
            spec.update(factor_bits=factor_bits, base_bits=base_bits, group_size=32)
        held = sum(math.prod(shape) * (torch.finfo(dt).bits if dt.is_floating_point else torch.iinfo(dt).bits)
                   for name, dt, shape in entries(spec, dtype) if name != "bias")
        assert spec_bits(spec, dtype) == held, spec


@pytest.mark.parametrize("factor_bits,base_bits,bits", [(8, 0, 4.0), (8, 3, 4.6), (16, 4, 6.0), (4, 0, 2.5)])
def test_a_byte_budget_is_met_by_the_largest_ratio_that_fits(factor_bits, base_bits, bits):
    model = tiny("qwen2")
    cfg = build_config("svd_llm", bits=bits, factor_bits=factor_bits, base_bits=base_bits, group_size=32)
    rep = sz.compress(model, cfg, calib(), progress=False)
    assert rep.bits_per_weight() <= bits
    assert rep.config["output"]["bits"] == bits and cfg.ratio == 0.8  # the caller's config is not rewritten
    # one step more in ratio would not fit: the budget is used, not just respected
    _, targets = find_targets(tiny("qwen2"), cfg)
    r = ratio_for_bits(targets, cfg, torch.float32)
    assert r == pytest.approx(rep.config["ratio"])
    weights = sum(t.shape[0] * t.shape[1] for t in targets)
    at = lambda ratio: sum(spec_bits(layer_spec(t.shape, ratio, t.module.bias is not None, cfg), torch.float32)  # noqa: E731
                           for t in targets) / weights
    assert at(r) <= bits < at(min(1.0, r * 1.05)) or r == 1.0


def test_a_byte_budget_below_rank_one_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match=r"bits = 3.1 is below the least these targets can store: "
                                         r"\d\.\d+ bits per weight at rank 1 on a 3-bit base"):
        sz.compress(tiny("llama"), build_config("svd_llm", bits=3.1, base_bits=3, factor_bits=8, group_size=32), calib(),
                    progress=False)
    with pytest.raises(ValueError, match="bits = 0"):
        build_config("svd_llm", bits=0)
    with pytest.raises(ValueError, match="overrides or last-blocks"):
        build_config("svd_llm", bits=4, overrides={"*q_proj": 0.5})


def test_cli_takes_one_budget(tmp_path):
    r = subprocess.run([sys.executable, "-m", "svdzip", "compress", "smollm2-135m", str(tmp_path / "o"),
                        "--ratio", "0.5", "--bits", "4"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--ratio and --bits are two budgets" in r.stderr


def test_bits_per_weight_counts_targets_left_dense_at_the_model_dtype():
    model = tiny("llama", 4)
    rep = sz.compress(model, build_config("ressvd", ratio=0.8, factor_bits=8, group_size=32), calib(), progress=False)
    assert rep.dense_target_weights > 0  # ResSVD leaves the first blocks dense
    compressed = [m.shape[0] * m.shape[1] for m in rep.modules]
    stored = sum(m.notes["bits_per_weight"] * w for m, w in zip(rep.modules, compressed))
    want = (stored + 32 * rep.dense_target_weights) / (sum(compressed) + rep.dense_target_weights)
    assert rep.bits_per_weight() == pytest.approx(want)
    assert rep.bits_per_weight() > stored / sum(compressed)


class _Out:  # the output part's fields the prices read
    factor_bits, base_bits, group_size = 8, 0, 32


@pytest.mark.parametrize("seed", range(4))
def test_byte_priced_knapsack_equals_exhaustive_search(seed):
    shapes = {"a": (40, 24), "b": (36, 30), "c": (32, 32)}
    spectra, w = random_spectra(shapes, seed)
    prices = {n: in_bits(*s, _Out, 32) for n, s in shapes.items()}
    budget = int(6 * sum(m * n for m, n in shapes.values()))  # 6 bits per weight

    def options(name):
        m, n = shapes[name]
        return [(k, layer_bits(m, n, k, 8, 0, 32, 32)) for k in range(1, top_lowrank(m, n) + 1)] + [(None, m * n * 32)]

    def loss(name, k):
        return 0.0 if k is None else w[name] * float(spectra[name][k:].sum())

    best = min(sum(loss(nm, k) for nm, (k, _) in zip(shapes, combo))
               for combo in itertools.product(*(options(n) for n in shapes)) if sum(c for _, c in combo) <= budget)
    ratios = allocation.allocate_loss(spectra, w, shapes, budget, prices=prices, unit="bits")
    ks = {n: None if r >= 1 else rank.rank_for_ratio(*shapes[n], r) for n, r in ratios.items()}
    spent = sum(dict(options(n))[k] for n, k in ks.items())
    assert spent <= budget
    got = sum(loss(n, k) for n, k in ks.items())
    assert got <= best * (1 + 1e-9) + 1e-12 or got - best < 0.05 * best  # greedy: optimal up to the last item


def test_a_byte_budget_below_the_floor_is_refused_in_bits():
    shapes = {"a": (40, 24)}
    with pytest.raises(ValueError, match=r"budget of 100 bits is below the floor .* \(\d+ bits\)"):
        allocation.allocate_loss({"a": torch.ones(24, dtype=torch.float64)}, {"a": 1.0}, shapes, 100,
                                 prices={"a": in_bits(40, 24, _Out, 32)}, unit="bits")


@pytest.mark.parametrize("bits", [5.0, 9.0])
def test_loss_allocation_meets_a_byte_budget_and_uses_it(bits):
    """Priced in parameters, the plan at the ratio of `bits` leaves modules dense at 32 bits and
    stores more than the budget; priced in bits it stays within it, and close to it."""
    model = tiny("qwen2")
    cfg = build_config("svd_llm", allocation="loss", loss_importance="block", loss_windows=2, bits=bits,
                       factor_bits=8, group_size=32)
    rep = sz.compress(model, cfg, calib(8, 32), progress=False)
    assert "budget_bits" in rep.allocation and f"budget {bits}" in rep.summary()
    assert bits - 0.25 < rep.bits_per_weight() <= bits
    assert "bits=" in rep.summary(per_module=True)
    with torch.no_grad():
        assert torch.isfinite(model(calib(1, 16)).logits).all()


def test_sensitivity_allocation_refuses_a_byte_budget():
    with pytest.raises(ValueError, match="allocation='sensitivity' prices parameters"):
        build_config("asvd", allocation="sensitivity", bits=4.0, factor_bits=8)


def test_a_uniform_budget_above_the_top_rank_keeps_every_module_low_rank():
    """Ratio 1 means dense at the model's dtype: a budget that the top low-rank layers fit under
    must not turn into a dense model that stores 32 bits per weight."""
    rep = sz.compress(tiny("qwen2"), build_config("svd_llm", bits=9.0, factor_bits=8, group_size=32), calib(),
                      progress=False)
    assert rep.dense_target_weights == 0 and rep.bits_per_weight() <= 9.0


def test_byte_priced_loss_plan_offloaded_equals_in_memory(tmp_path):
    from svdzip.offload import compress_checkpoint

    cfg = build_config("svd_llm", allocation="loss", loss_importance="block", loss_windows=2, bits=6.0,
                       factor_bits=8, group_size=32)
    model = tiny("llama")
    model.save_pretrained(tmp_path / "ckpt")
    rep = sz.compress(model, cfg, calib(8, 32), progress=False)
    off = compress_checkpoint(tmp_path / "ckpt", tmp_path / "off", cfg, calib(8, 32), progress=False)
    assert off.allocation["ratios"] == rep.allocation["ratios"]
    assert off.allocation["budget_bits"] == rep.allocation["budget_bits"]
    assert off.bits_per_weight() == pytest.approx(rep.bits_per_weight()) and rep.bits_per_weight() <= 6.0
