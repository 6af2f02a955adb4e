"""The Hugging Face route: AutoModelForCausalLM.from_pretrained / save_pretrained of svdzip
directories (quant_method and model_type "svdzip"), loud failure without svdzip, the low-rank
KV cache and generate() on models loaded that way, torch.compile without graph breaks."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import svdzip as sz
from svdzip.kvcache import LowRankKVCache
from svdzip.pipeline.checkpoint import Checkpoint

from tiny_models import calib, tiny

ARCHS = ["llama", "qwen2", "gemma3"]  # tied head, untied head with q/k/v biases, Gemma-3


def _compressed(arch, tmp_path, cfg=None):
    model = tiny(arch)
    sz.compress(model, cfg or sz.SVDLLMConfig(ratio=0.6), calib(), progress=False)
    sz.save_compressed(model, tmp_path / arch)
    return model, tmp_path / arch


def _every_parameter_saved(model, directory):
    """No parameter left at a random init: each equals the tensor saved under its name (a tied
    one under the name it is tied to)."""
    ckpt = Checkpoint(directory)
    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    for name, p in model.named_parameters(remove_duplicate=False):
        stored = name if name in ckpt else tied.get(name)
        assert stored in ckpt, f"{name} is not in the checkpoint"
        assert torch.equal(p.detach(), ckpt.read(stored).to(p.dtype)), name


@pytest.mark.parametrize("arch", ARCHS)
def test_from_pretrained_round_trip_identical_logits(arch, tmp_path):
    model, out = _compressed(arch, tmp_path)
    assert json.loads((out / "config.json").read_text())["model_type"] == "svdzip"
    loaded = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    assert isinstance(loaded.model.layers[0].mlp.down_proj, sz.LowRankLinear)
    _every_parameter_saved(loaded, out)
    ids = calib(2)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # save_pretrained of the loaded model: a directory that loads the same way, and load_compressed reads it
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "svdzip"
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    one_call = sz.load_compressed(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
        assert torch.equal(one_call(ids).logits, model(ids).logits)


def test_dtype_and_generate(tmp_path):
    model, out = _compressed("llama", tmp_path)
    bf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}
    ids = calib(1)[:, :6]
    want = model.generate(ids, max_new_tokens=8, do_sample=False)
    got = AutoModelForCausalLM.from_pretrained(out).generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)


def test_save_pretrained_of_a_compressed_model_loads_back(tmp_path):
    model = tiny("qwen2")
    sz.compress(model, sz.NSVDConfig(ratio=0.6), calib(), progress=False)
    model.save_pretrained(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    _every_parameter_saved(loaded, tmp_path / "hf")
    ids = calib(2)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_without_svdzip_loading_fails_loudly(tmp_path):
    _, out = _compressed("llama", tmp_path)
    code = ("import sys\nfrom transformers import AutoModelForCausalLM\n"
            f"AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
            "assert 'svdzip' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, "loaded an svdzip directory without svdzip: random weights"
    assert "model type `svdzip`" in r.stderr, r.stderr[-2000:]


def test_missing_factor_is_an_error_not_a_random_init(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    _, out = _compressed("qwen2", tmp_path)
    f = out / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.layers.1.mlp.up_proj.B"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.safetensors: checksum mismatch"):
        AutoModelForCausalLM.from_pretrained(out)
    monkeypatch.setenv("SVDZIP_NO_VERIFY", "1")  # the structural check still stands behind it
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.B'\]"):
        AutoModelForCausalLM.from_pretrained(out)


def test_lowrank_kv_cache_on_a_model_loaded_by_from_pretrained(tmp_path):
    from svdzip.kvcache import kv_overrides

    model = tiny("llama")
    cfg = sz.ASVDConfig(ratio=0.99, targets=("*k_proj", "*v_proj"), overrides=kv_overrides(model, 0.5))
    sz.compress(model, cfg, calib(), progress=False)
    sz.save_compressed(model, tmp_path / "kv")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "kv")
    ids = calib(1)[:, :6]
    want = loaded.generate(ids, max_new_tokens=16, do_sample=False)
    with LowRankKVCache(loaded) as cache:
        got = loaded.generate(ids, cache=cache, max_new_tokens=16, do_sample=False)
    assert torch.equal(got, want)


def test_torch_compile_fullgraph_same_logits(tmp_path):
    model, _ = _compressed("llama", tmp_path)
    ids = calib(2)
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True, backend="eager")  # graph capture: no break allowed
        assert torch.allclose(compiled(ids).logits, eager, rtol=1e-5, atol=1e-5)


def test_generate_with_a_static_cache_compiled(tmp_path):
    """generate() on a compiled forward with a static cache gives the eager tokens."""
    model, out = _compressed("llama", tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = calib(1)[:, :6]
    want = loaded.generate(ids, max_new_tokens=8, do_sample=False)
    loaded.forward = torch.compile(loaded.forward, fullgraph=True, backend="eager")
    got = loaded.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(got, want)


@pytest.mark.parametrize("probe", [False, True])
def test_import_svdzip_registers_with_transformers_imported_later(probe):
    """`import svdzip` before transformers (it imports neither torch nor transformers itself):
    the registration happens when transformers is imported, even after an availability probe."""
    import subprocess
    import sys

    code = ("import sys, importlib.util, svdzip\n"
            "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
            + ("assert importlib.util.find_spec('transformers') is not None\n" if probe else "")
            + "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
              "assert 'svdzip' in CONFIG_MAPPING, 'not registered'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
