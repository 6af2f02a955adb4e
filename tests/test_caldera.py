"""base_rounds > 1 (CALDERA's alternation): the base rounded again to what the pair leaves and the
pair refitted, each module keeping its best round on the calibration Gram."""

import pytest
import torch

import svdzip as sz
from svdzip.config import build_config

from tiny_models import calib, tiny


@pytest.mark.parametrize("base_method", ["rtn", "gptq"])
def test_more_rounds_never_raise_a_module_error_and_lower_some(base_method):
    errors = {}
    for rounds in (1, 4):
        cfg = build_config("svd_llm", ratio=0.1, base_bits=3, group_size=32, base_method=base_method,
                           base_rounds=rounds)
        rep = sz.compress(tiny("llama"), cfg, calib(), progress=False)
        errors[rounds] = {m.name: m.out_rel_error for m in rep.modules}
        kept = [m.notes.get("base_round") for m in rep.modules]
        assert all(k is None for k in kept) if rounds == 1 else all(1 <= k <= rounds for k in kept)
    once, four = errors[1], errors[4]
    assert all(four[n] <= once[n] * (1 + 1e-5) for n in once)  # round 1 is among the candidates
    assert sum(four[n] < once[n] * (1 - 1e-3) for n in once) >= len(once) // 4  # and alternating helps


def test_base_rounds_that_cannot_apply_are_refused():
    with pytest.raises(ValueError, match="base_rounds = 2 rounds svdzip's own base again: it needs base_bits"):
        build_config("svd_llm", base_rounds=2)
    with pytest.raises(ValueError, match=r"base_rounds = 0 must be an integer in \[1, 16\]"):
        build_config("svd_llm", base_bits=3, base_rounds=0)
    with pytest.raises(ValueError, match="a checkpoint's base is kept as it is"):
        build_config("svd_llm", base_bits=4, base_from="somewhere", base_rounds=3)
