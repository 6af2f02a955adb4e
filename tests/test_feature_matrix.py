"""Every registered method x every allocation strategy x objective, in memory and out of core, on
a tiny model: the same factors in both modes, or the same refusal in both (config validation or
driver.refuse, the one list). Parametrised from the registries, so a new method or strategy is
tested in every mode by registering it. (Process groups: tests/test_distributed.py runs every
method and the allocations against one process.)"""

import pytest
import torch

import svdzip as sz
from svdzip.allocation import STRATEGIES
from svdzip.config import ALLOCATIONS, CONFIGS, build_config
from svdzip.offload import compress_checkpoint
from svdzip.pipeline.checkpoint import Checkpoint

from tiny_models import calib, tiny

OPTIONS = {  # what each strategy needs to be tried quickly on a 3-block model
    "uniform": {}, "last_blocks": {"last_blocks": 2},
    "sensitivity": {"sensitivity_ratios": (0.3, 0.6, 0.9), "sensitivity_seqlen": 16},
    "loss": {"loss_windows": 2, "loss_probe_windows": 2},
}
ALL = [(m, a, o) for m in sorted(CONFIGS) for a in sorted(STRATEGIES) for o in ("plain", "compensated")]




def _config(method, allocation, objective):
    kw = dict(ratio=0.6, allocation=allocation, objective=objective, **OPTIONS[allocation])
    if objective == "compensated" or method != "fwsvd" and allocation == "loss":
        kw["sequential"] = True  # compensated needs it; loss with sequential is the recipe's pipeline
    return build_config(method, **kw)


def _refusal(case) -> str | None:
    try:
        _config(*case)
    except ValueError as exc:
        return str(exc)
    return None


CASES = [c for c in ALL if _refusal(c) is None]
REFUSED = {c: _refusal(c) for c in ALL if _refusal(c) is not None}


def test_the_matrix_covers_every_registered_method_and_strategy():
    assert set(STRATEGIES) == set(ALLOCATIONS) == set(OPTIONS)
    assert {m for m, _, _ in CASES} == set(CONFIGS) and {a for _, a, _ in CASES} == set(STRATEGIES)


def test_what_the_config_refuses_is_said_with_the_reason():
    """The combinations refused before any mode runs (the same for every mode): compensated
    without a whitened first stage, FWSVD sequential, a uniform allocation for ResSVD (which
    compresses only the last blocks: the config says so instead of running another strategy)."""
    assert REFUSED, "some combinations are refused"
    for (method, allocation, objective), msg in REFUSED.items():
        uniform_last = allocation == "uniform" and "compresses only the last blocks" in msg
        assert "compensated" in msg or "sequential" in msg or uniform_last, (method, allocation, objective, msg)
    assert ("ressvd", "uniform", "plain") in REFUSED and ("ressvd", "last_blocks", "plain") in CASES


def _outcome(fn):
    try:
        return fn(), None
    except (ValueError, TypeError) as exc:
        return None, str(exc)


@pytest.mark.parametrize("method,allocation,objective", CASES, ids=lambda v: str(v))
def test_in_memory_and_offloaded_agree(tmp_path, monkeypatch, method, allocation, objective):
    monkeypatch.setenv("SVDZIP_CACHE", str(tmp_path / "cache"))
    cfg = _config(method, allocation, objective)
    ckpt = tmp_path / "ckpt"
    tiny("llama").save_pretrained(ckpt)
    model = tiny("llama")
    mem, mem_err = _outcome(lambda: sz.compress(model, cfg, calib(8), progress=False))
    monkeypatch.setenv("SVDZIP_CACHE", str(tmp_path / "cache-off"))
    off, off_err = _outcome(lambda: compress_checkpoint(ckpt, tmp_path / "off", cfg, calib(8), progress=False,
                                                        trial_memory=1))
    assert mem_err == off_err, (mem_err, off_err)
    if mem_err is not None:
        return
    state = model.state_dict()
    stored = Checkpoint(tmp_path / "off")
    low = [n for n in stored.files if n.endswith((".A", ".B"))]
    assert low, "something was compressed"
    for name in stored.files:
        assert torch.equal(stored.read(name), state[name]), name
    assert [m.rank for m in mem.modules] == [m.rank for m in off.modules]
