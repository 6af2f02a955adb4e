"""svdzip export: AOTInductor packages, the C++ runner (examples/cpp_generate) and their errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import svdzip as sz
from svdzip import cli_export, export
from svdzip.cli import main as cli_main
from svdzip.hf import base_model_type
from tiny_models import tiny

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("llama", "qwen2", "gemma3")  # tiny_models' layouts


def compressed(arch: str):
    model = tiny(arch)
    calib = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(1))
    sz.compress(model, sz.SVDLLMConfig(ratio=0.8), calib, progress=False)
    return model


def test_every_supported_architecture_has_a_tiny_model():
    covered = {base_model_type(tiny(a, layers=1).config) for a in ARCHS}
    assert set(export.SUPPORTED) <= covered, set(export.SUPPORTED) - covered


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """examples/cpp_generate built against the running torch (cmake, ~25 s)."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not on PATH: the C++ runner cannot be built")
    build = tmp_path_factory.mktemp("generate_build")
    models = []
    for arch in ARCHS:
        d = build / f"model_{arch}"
        sz.save_compressed(compressed(arch), d)
        models.append(str(d))
    subprocess.run(["cmake", "-S", ROOT / "examples/cpp_generate", "-B", build,
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                    f"-DPython_EXECUTABLE={sys.executable}", f"-DSVDZIP_GENERATE_MODELS={';'.join(models)}"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", build, "-j2"], check=True, capture_output=True, timeout=600)
    return build


def test_cpp_runner_tokens_equal_python_generate(runner):
    """The ctest: each tiny compressed model exported, run by the C++ program, tokens compared
    with transformers' generate() on the eager model."""
    run = subprocess.run(["ctest", "--output-on-failure"], cwd=runner, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"100% tests passed, 0 tests failed out of {len(ARCHS)}" in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("prompt, n_new, message", [
    ("1 2", 100, "past the package's max_seq_len"),
    ("1 999", 3, "outside the vocabulary"),
    ("", 3, "has no token ids"),
    ("1 x", 3, "must be an integer"),
])
def test_cpp_runner_refuses_bad_input(runner, prompt, n_new, message):
    package = runner / "check_1" / "model.pt2"  # made by the ctest above (max_seq_len 39)
    if not package.is_file():
        pytest.fail("the ctest did not leave its package; run the whole module")
    run = subprocess.run([runner / "svdzip_generate", package, str(n_new)], input=prompt,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_cpp_runner_names_a_missing_package(runner, tmp_path):
    run = subprocess.run([runner / "svdzip_generate", tmp_path / "none.pt2", "3"], input="1",
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "none.pt2" in run.stderr


@pytest.mark.parametrize("path", export.LOWRANK_PATHS)
def test_lowrank_path_decides_what_the_graph_holds(path):
    model = compressed("llama")
    program = export.export_program(model, 16, lowrank=path)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    has_op = "svdzip.lowrank_linear.default" in targets
    native = sz.ops._use_native("lowrank_linear", torch.zeros(1))
    assert has_op == (path == "op" and native), sorted(targets)


def test_package_logits_equal_the_model_and_the_cache_persists(tmp_path):
    model = compressed("qwen2")
    package = export.export_package(model, tmp_path / "m.pt2", max_seq_len=16, progress=lambda s: None)
    run = export.load_package(package)
    ids = torch.tensor([[5, 9, 1, 77, 3]])
    with torch.no_grad():
        want = model(ids).logits
        first = run(input_ids=ids[:, :3], cache_position=torch.arange(3))
        rest = run(input_ids=ids[:, 3:], cache_position=torch.arange(3, 5))  # reads the cached 3
    got = torch.cat([first, rest], dim=1)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()
    with pytest.raises(export.ExportError, match="'gpt2'.*not supported.*llama"):
        export.export_program(model, 16)


def test_cache_past_the_model_limit_is_refused():
    model = tiny("llama", layers=1)
    limit = model.config.max_position_embeddings
    with pytest.raises(export.ExportError, match=f"max_seq_len = {limit + 1} is past llama's limit of {limit}"):
        export.export_program(model, limit + 1)


def test_missing_compiler_is_named(monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", ("/nonexistent/g++-none",))
    with pytest.raises(export.ExportError, match="needs a C\\+\\+ compiler"):
        export.check_compiler()


def test_existing_output_is_kept_and_bad_names_refused(tmp_path):
    model = tiny("llama", layers=1)
    kept = tmp_path / "user.pt2"
    kept.write_bytes(b"user's file")
    with pytest.raises(export.ExportError, match="exists; nothing was written"):
        export.export_package(model, kept, max_seq_len=8, progress=lambda s: None)
    assert kept.read_bytes() == b"user's file"
    with pytest.raises(export.ExportError, match="must end in .pt2"):
        export.export_package(model, tmp_path / "model.bin", max_seq_len=8, progress=lambda s: None)
    assert sorted(os.listdir(tmp_path)) == ["user.pt2"]


def test_corrupt_package_is_named(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(export.ExportError, match="bad.pt2 is not a readable AOTInductor package"):
        export.load_package(bad)


def test_cli_choices_are_the_exporters():
    assert cli_export.LOWRANK_PATHS == export.LOWRANK_PATHS and cli_export.DEVICES == export.DEVICES


def test_cli_refuses_an_existing_output_before_loading_the_model(tmp_path, capsys):
    kept = tmp_path / "user.pt2"
    kept.write_bytes(b"user's file")
    assert cli_main(["export", str(tmp_path / "no_such_model"), str(kept)]) != 0
    assert "exists; nothing was written" in capsys.readouterr().err  # not the missing model
    assert kept.read_bytes() == b"user's file"


def test_cli_export_error_is_one_line(tmp_path, capsys):
    d = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(d)
    assert cli_main(["export", str(d), str(tmp_path / "g.pt2")]) != 0
    err = capsys.readouterr().err
    assert "not supported" in err and "Traceback" not in err
    assert not (tmp_path / "g.pt2").exists()


def test_quantized_layers_are_refused_by_name():
    model = tiny("llama", layers=1)
    calib = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(1))
    sz.compress(model, sz.build_config("svd_llm", ratio=0.8, factor_bits=8), calib, progress=False)
    with pytest.raises(export.ExportError, match="quantized layers .e.g. model.layers.0"):
        export.export_program(model, 16)


def test_attention_reads_the_cache_without_repeating_heads():
    """Llama with 4 query heads on 2 key/value heads: the graph's SDPA takes the cache as it is
    (enable_gqa), no repeat_kv copy of it per step."""
    program = export.export_program(compressed("llama"), 16)
    sdpa = [n for n in program.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert sdpa and all(n.kwargs.get("enable_gqa") for n in sdpa), [(n.target, n.kwargs) for n in sdpa]
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ
