"""Save/load round trips, atomic saves, and clear errors for damaged checkpoints."""

import json
from pathlib import Path

import pytest
import torch

import svdzip as sz
from svdzip import io

from tiny_models import calib, tiny


@pytest.fixture
def compressed():
    model = tiny("qwen2")
    rep = sz.compress(model, sz.NSVDConfig(ratio=0.6), calib(), progress=False)
    return model, rep


def _logits(model, ids=None):
    with torch.no_grad():
        return model(calib(1) if ids is None else ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_round_trip_gives_identical_logits(tmp_path, arch):
    model = tiny(arch)
    rep = sz.compress(model, sz.SVDLLMConfig(ratio=0.5), calib(), progress=False)
    out = sz.save_compressed(model, tmp_path / "m", report=rep)
    meta = json.loads((out / "svdzip_config.json").read_text())
    assert meta["format_version"] == 1 and meta["method_config"]["method"] == "svd_llm"
    assert len(meta["modules"]) == len(rep.modules)
    loaded = sz.load_compressed(out)
    assert torch.equal(_logits(model), _logits(loaded))


def test_save_replaces_atomically_and_keeps_old_on_failure(tmp_path, compressed, monkeypatch):
    model, rep = compressed
    out = sz.save_compressed(model, tmp_path / "m", report=rep)
    before = (out / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io, "write_meta", boom)  # fails after the weights are written
    with pytest.raises(OSError, match="disk full"):
        sz.save_compressed(model, out, report=rep)
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left behind


def test_refuses_to_save_uncompressed_or_nan(tmp_path, compressed):
    with pytest.raises(ValueError, match="no LowRankLinear modules"):
        sz.save_compressed(tiny("llama"), tmp_path / "x")
    model, _ = compressed
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.A[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="model.layers.0.self_attn.q_proj.A has non-finite"):
        sz.save_compressed(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_truncated_weights_are_named(tmp_path, compressed):
    model, rep = compressed
    out = sz.save_compressed(model, tmp_path / "m", report=rep)
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model.safetensors could not be read \(corrupt or truncated\?\)"):
        sz.load_compressed(out)


@pytest.mark.parametrize("damage,msg", [
    (lambda m: "{not json", "svdzip_config.json is corrupt"),
    (lambda m: json.dumps({**m, "format_version": 7}), "format_version 7 is not supported"),
    (lambda m: json.dumps({**m, "modules": {}}), "'modules' \\(the rank map\\) is missing"),
    (lambda m: json.dumps({**m, "modules": {**m["modules"], "model.layers.0.self_attn.q_proj": {"rank": 0}}}),
     "model.layers.0.self_attn.q_proj has an invalid spec"),
    (lambda m: json.dumps({**m, "modules": {**m["modules"], "model.layers.0.self_attn.q_proj":
                                            {**m["modules"]["model.layers.0.self_attn.q_proj"], "rank": 3}}}),
     "do not match the rank map|has shape|could not be read"),
])
def test_damaged_config_is_named(tmp_path, compressed, damage, msg):
    model, rep = compressed
    out = sz.save_compressed(model, tmp_path / "m", report=rep)
    cfg = out / "svdzip_config.json"
    cfg.write_text(damage(json.loads(cfg.read_text())))
    with pytest.raises(ValueError, match=msg):
        sz.load_compressed(out)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an svdzip output directory"):
        sz.load_compressed(tmp_path)
