"""Block-wise refinement of the factors: never worse on the held-out windows, deterministic,
a NaN aborts naming the block and leaves the unrefined factors."""
import pytest
import torch

import svdzip as sz

from tiny_models import calib, tiny


def _cfg(**kw):
    return sz.build_config("svd_llm", ratio=0.4, sequential=True, **{"refine_epochs": 4, "refine_lr": 1e-4, **kw})


@pytest.mark.parametrize("arch,weighting", [("llama", "channel"), ("qwen2", "channel"), ("gemma3", "channel"),
                                            ("llama", "none")])
def test_refinement_never_hurts_the_heldout_windows_and_helps_somewhere(arch, weighting):
    model = tiny(arch)
    rep = sz.compress(model, _cfg(refine_weighting=weighting), calib(16, 32), progress=False)
    assert [r["block"] for r in rep.refinement] == [0, 1, 2]
    for r in rep.refinement:
        assert r["heldout_after"] <= r["heldout_before"]
        assert (r["epochs"] > 0) == (r["heldout_after"] < r["heldout_before"])
    assert any(r["epochs"] > 0 for r in rep.refinement)
    assert rep.seconds_refine > 0 and "refinement:" in rep.summary()


def test_refinement_is_deterministic_and_off_by_default():
    ids = calib(16, 32)
    a, b, c = tiny("llama"), tiny("llama"), tiny("llama")
    sz.compress(a, _cfg(refine_seed=3), ids, progress=False)
    sz.compress(b, _cfg(refine_seed=3), ids, progress=False)
    rep = sz.compress(c, sz.build_config("svd_llm", ratio=0.4, sequential=True), ids, progress=False)
    assert rep.refinement == []
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), n
    changed = [n for (n, p), (_, r) in zip(a.named_parameters(), c.named_parameters()) if not torch.equal(p, r)]
    assert changed and all(n.endswith((".A", ".B")) for n in changed)  # the factors and nothing else


def test_nan_during_refinement_names_the_block_and_keeps_the_unrefined_factors(monkeypatch):
    ids = calib(16, 32)
    plain = tiny("llama")
    sz.compress(plain, sz.build_config("svd_llm", ratio=0.4, sequential=True), ids, progress=False)
    step = torch.optim.Adam.step

    def poisoned(self, *a, **k):
        out = step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    model = tiny("llama")
    with pytest.raises(FloatingPointError, match="block 0: refinement loss became nan"):
        sz.compress(model, _cfg(), ids, progress=False)
    q, q0 = model.model.layers[0].self_attn.q_proj, plain.model.layers[0].self_attn.q_proj
    assert torch.isfinite(q.A).all() and torch.equal(q.A, q0.A) and torch.equal(q.B, q0.B)


def test_the_weighting_reaches_the_training():
    ids = calib(16, 32)
    a, b = tiny("llama"), tiny("llama")
    ra = sz.compress(a, _cfg(refine_weighting="channel"), ids, progress=False)
    rb = sz.compress(b, _cfg(refine_weighting="none"), ids, progress=False)
    assert [r["heldout_before"] for r in ra.refinement] != [r["heldout_before"] for r in rb.refinement]
    q, p = a.model.layers[0].self_attn.q_proj, b.model.layers[0].self_attn.q_proj
    assert not torch.equal(q.A, p.A)


def test_channel_weights_equalise_the_channels_relative_error():
    from svdzip.pipeline.refine import channel_weights

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([100.0, 1.0, 0.1, 0.0])  # one huge channel, one that is zero throughout
    targets = [torch.randn(1, 8, 4, generator=g) * scale for _ in range(3)]
    assert channel_weights(targets, [0, 1], "none", "cpu") is None
    w = channel_weights(targets, [0, 1], "channel", "cpu")
    assert torch.isfinite(w).all() and w.mean().item() == pytest.approx(1.0)
    ms = torch.cat([t.reshape(-1, 4) for t in targets[:2]]).square().mean(0)
    # the same relative error in each live channel weighs the same; the dead channel gets the top weight
    assert torch.allclose(w[:3] * ms[:3], (w[:3] * ms[:3]).mean().expand(3), rtol=1e-5)
    assert w[3] == w[:3].max() and w[0] < w[1] < w[2]
    # only the windows given count: the third window (held out) does not move the weights
    bumped = targets[:2] + [targets[2] * 1000]
    assert torch.equal(channel_weights(bumped, [0, 1], "channel", "cpu"), w)


@pytest.mark.parametrize("kw,msg", [
    ({"refine_weighting": "rms"}, "refine_weighting"),
    ({"sequential": False}, "set sequential=True"),
    ({"refine_epochs": -1}, "non-negative integer"),
    ({"refine_lr": 0.0}, "refine_lr"),
    ({"refine_holdout": 1.0}, "refine_holdout"),
])
def test_refinement_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        sz.build_config("svd_llm", ratio=0.5, **{"sequential": True, "refine_epochs": 2, **kw})
