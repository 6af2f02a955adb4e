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
    assert "modules" not in meta  # one rank map: config.json's quantization_config
    ranks = json.loads((out / "config.json").read_text())["quantization_config"]["modules"]
    assert len(ranks) == len(rep.modules)
    assert set(meta["checksums"]) == {"model.safetensors"}
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
        sz.save_compressed(model, out, report=rep, overwrite=True)
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


def test_truncated_weights_are_named(tmp_path, compressed, monkeypatch):
    model, rep = compressed
    out = sz.save_compressed(model, tmp_path / "m", report=rep)
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model.safetensors: checksum mismatch"):
        sz.load_compressed(out)
    monkeypatch.setenv("SVDZIP_NO_VERIFY", "1")  # unchecked, the reader still names the file
    with pytest.raises(ValueError, match=r"model.safetensors could not be read \(corrupt or truncated\?\)"):
        sz.load_compressed(out)


def _with_modules(cfg: dict, modules) -> str:
    return json.dumps({**cfg, "quantization_config": {**cfg["quantization_config"], "modules": modules}})


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("file,damage,msg", [
    ("svdzip_config.json", lambda m: "{not json", "svdzip_config.json is corrupt"),
    ("svdzip_config.json", lambda m: json.dumps({**m, "format_version": 7}), "format_version 7 is not supported"),
    ("config.json", lambda c: _with_modules(c, {}), "'modules' \\(the rank map\\) is missing"),
    ("config.json", lambda c: _with_modules(c, {**c["quantization_config"]["modules"], Q: {"rank": 0}}),
     "model.layers.0.self_attn.q_proj has an invalid spec"),
    ("config.json", lambda c: _with_modules(c, {**c["quantization_config"]["modules"],
                                                Q: {**c["quantization_config"]["modules"][Q], "rank": 3}}),
     "do not match the rank map|has shape|could not be read"),
    # an older output's second rank map (svdzip_config.json) that disagrees is refused, not chosen from
    ("svdzip_config.json", lambda m: json.dumps({**m, "modules": {Q: {"rank": 1, "in_features": 64,
                                                                      "out_features": 64, "bias": True}}}),
     "disagree on the rank map"),
])
def test_damaged_config_is_named(tmp_path, compressed, file, damage, msg):
    model, rep = compressed
    out = sz.save_compressed(model, tmp_path / "m", report=rep)
    cfg = out / file
    cfg.write_text(damage(json.loads(cfg.read_text())))
    with pytest.raises(ValueError, match=msg):
        sz.load_compressed(out)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an svdzip output directory"):
        sz.load_compressed(tmp_path)
