"""Nothing lost, nothing silently wrong: output directories, checksums, interrupts, patterns,
too little calibration (docs/errors.md lists each input and what svdzip says)."""

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import svdzip as sz
from svdzip.offload import compress_checkpoint
from svdzip.pipeline.integrity import ChecksumMismatch
from svdzip.pipeline.outdir import OutputRefused

from test_offload import _checkpoint, _killed_run
from tiny_models import calib, tiny

CFG = sz.SVDLLMConfig(ratio=0.6)


def _compressed(arch="llama"):
    model = tiny(arch)
    sz.compress(model, CFG, calib(8), progress=False)
    return model


WRITERS = {
    "save_compressed": lambda out, **kw: sz.save_compressed(_compressed(), out, **kw),
    "save_pretrained": lambda out, **kw: _compressed().save_pretrained(out, **kw),
    "compress_checkpoint": lambda out, ckpt, **kw: compress_checkpoint(ckpt, out, CFG, calib(8), progress=False, **kw),
}


def _write(name, out, tmp_path, **kw):
    if name == "compress_checkpoint":
        return WRITERS[name](out, _checkpoint(tmp_path), **kw)
    return WRITERS[name](out, **kw)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_existing_non_empty_output_is_refused_then_replaced_with_overwrite(tmp_path, writer):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefused, match=r"exists and is not empty \(notes.txt\).*overwrite"):
        _write(writer, out, tmp_path)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "out.partial").exists()
    _write(writer, out, tmp_path, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "svdzip_config.json").is_file()
    sz.load_compressed(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_an_empty_existing_directory_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    sz.save_compressed(_compressed(), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_in_or_over_the_input_model_is_refused_even_with_overwrite(tmp_path, where):
    ckpt = _checkpoint(tmp_path)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    out = {"same": ckpt, "inside": ckpt / "sub", "parent": tmp_path}[where]
    with pytest.raises(OutputRefused, match="input model directory"):
        compress_checkpoint(ckpt, out, CFG, calib(8), progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_save_pretrained_never_writes_over_the_directory_it_was_loaded_from(tmp_path):
    d = sz.save_compressed(_compressed(), tmp_path / "m")
    before = (d / "model.safetensors").read_bytes()
    loaded = AutoModelForCausalLM.from_pretrained(d)
    with pytest.raises(OutputRefused, match="input model directory"):
        loaded.save_pretrained(d, overwrite=True)
    assert (d / "model.safetensors").read_bytes() == before
    loaded.save_pretrained(tmp_path / "copy")
    assert torch.equal(sz.load_compressed(tmp_path / "copy")(calib(1)).logits, loaded(calib(1)).logits)


def test_stale_staging_directories_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / ".m.saving-999999999-abc"   # no such process
    live = tmp_path / f".m.saving-{os.getpid()}-xyz"
    other = tmp_path / ".other.saving-999999999-abc"
    for d in (dead, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    sz.save_compressed(_compressed(), tmp_path / "m")
    assert not dead.exists() and live.exists() and other.exists()


def test_stale_export_staging_files_are_removed_live_ones_kept(tmp_path):
    """A killed `svdzip export model.pt2` leaves .model.saving-PID.pt2 beside it; the next export of
    that name removes it (export_package calls clean_stale on the name without .pt2)."""
    from svdzip.pipeline.outdir import clean_stale

    dead, live = tmp_path / ".model.saving-999999999.pt2", tmp_path / f".model.saving-{os.getpid()}.pt2"
    other = tmp_path / ".model2.saving-999999999.pt2"
    for f in (dead, live, other):
        f.write_bytes(b"half a package")
    assert clean_stale(tmp_path / "model") == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def _flip_a_byte(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside a tensor, not in the header
    f.write_bytes(bytes(data))


def svdzip_cli(*args, env=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "svdzip", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_one_flipped_byte_fails_every_loader_naming_the_file(tmp_path, monkeypatch):
    d = sz.save_compressed(_compressed(), tmp_path / "m")
    assert svdzip_cli("verify", str(d)).returncode == 0
    _flip_a_byte(d / "model.safetensors")
    with pytest.raises(ChecksumMismatch, match=r"m/model.safetensors: checksum mismatch"):
        sz.load_compressed(d)
    with pytest.raises(ChecksumMismatch, match=r"m/model.safetensors: checksum mismatch"):
        AutoModelForCausalLM.from_pretrained(d)
    for cmd in (["verify", str(d)], ["eval", str(d), "--data", "wiki", "--max-windows", "1"]):
        r = svdzip_cli(*cmd)
        assert r.returncode == 1 and "model.safetensors: checksum mismatch" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("SVDZIP_NO_VERIFY", "1")  # the documented way to skip the seconds
    sz.load_compressed(d)


def test_damaged_block_of_an_interrupted_run_is_refused_on_resume(tmp_path):
    ckpt = _checkpoint(tmp_path, layers=4)
    out = tmp_path / "out"
    _killed_run(tmp_path, ckpt, out, k=1)
    partial = tmp_path / "out.partial"
    shard = next(partial.glob("*.safetensors"))
    _flip_a_byte(shard)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch in .*delete .*out.partial"):
        compress_checkpoint(ckpt, out, sz.build_config("nsvd", ratio=0.6, sequential=True), calib(), progress=False)
    assert not out.exists()


def test_an_older_output_without_checksums_loads_with_one_warning(tmp_path):
    d = sz.save_compressed(_compressed(), tmp_path / "m")
    meta = json.loads((d / "svdzip_config.json").read_text())
    del meta["checksums"]
    (d / "svdzip_config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="saved without checksums"):
        sz.load_compressed(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sz.load_compressed(d)  # said once per directory


def test_patterns_given_as_a_string_or_matching_nothing_are_refused():
    with pytest.raises(ValueError, match=r"targets = '\*q_proj' must be a list or tuple .* not a string"):
        sz.SVDLLMConfig(targets="*q_proj")
    with pytest.raises(ValueError, match="ignore = 'x' must be"):
        sz.SVDLLMConfig(ignore="x")
    for kw, field in ((dict(ignore=("*q_porj",)), "ignore"), (dict(targets=("*.mlp.*", "lm_head")), "targets"),
                      (dict(overrides={"*.attn.*": 0.5}), "overrides")):
        model = tiny("llama")
        with pytest.raises(ValueError, match=f"{field} pattern .* matches no Linear inside the decoder blocks"):
            sz.compress(model, sz.build_config("svd_llm", ratio=0.6, **kw), calib(), progress=False)
        assert not any(isinstance(m, sz.LowRankLinear) for m in model.modules())  # nothing was touched


def test_too_little_calibration_is_warned_with_the_numbers_and_reported():
    model = tiny("llama")  # widest input: down_proj, 128
    with pytest.warns(UserWarning, match=r"calibration has 32 tokens \(2 windows x 16\).*at least 8 windows"):
        rep = sz.compress(model, CFG, calib(2, 16), progress=False)
    assert rep.warnings and "warning: calibration has 32 tokens" in rep.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sz.compress(tiny("llama"), CFG, calib(8, 16), progress=False).warnings == []


def test_seqlen_and_n_samples_past_their_limits_are_refused_before_the_model_loads(tmp_path):
    cases = [(["--seqlen", "100000"], "--seqlen 100000: smollm2-135m has 8,192 positions"),
             (["--n-samples", "5000"], "calibration text gives only 1083 windows of 512, 5000 asked"),
             (["--n-samples", "0"], "--n-samples: 0 must be at least 1"),
             (["--n-samples", "-1"], "--n-samples: -1 must be at least 1"),
             (["--eval", "wiki,nosuchset"], "'nosuchset' is neither one of wiki, ptb, code, bg nor a text file")]
    for flags, said in cases:
        r = svdzip_cli("compress", "smollm2-135m", str(tmp_path / "o"), *flags, timeout=60)
        assert r.returncode != 0 and said in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and "model smollm2-135m:" not in r.stdout
    assert not (tmp_path / "o").exists()


def test_eval_prints_each_result_before_a_later_failure(monkeypatch, capsys):
    from svdzip import cli, eval as ev

    real = ev.perplexity

    def second_fails(model, ids, desc="", **kw):
        if "ptb" in desc:
            raise FloatingPointError(f"{desc}: non-finite loss nan on window 0")
        return real(model, ids, desc=desc, **kw)

    monkeypatch.setattr(ev, "perplexity", second_fails)
    rc = cli.main(["eval", "smollm2-135m", "--data", "wiki,ptb", "--max-windows", "1", "--seqlen", "32"])
    out, err = capsys.readouterr()
    assert rc == 1 and "wiki: ppl " in out and "ppl ptb: non-finite loss" in err


@pytest.mark.parametrize("offload", [False, True])
def test_ctrl_c_during_compress_is_one_line_and_exit_130(tmp_path, offload):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "svdzip", "compress", "smollm2-135m", str(out), "--method", "svd_llm",
           "--n-samples", "4", "--seqlen", "64", *(["--offload"] if offload else [])]
    # A test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and then
    # Python never raises KeyboardInterrupt: the child gets the default disposition, as from a terminal.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = "peak" if offload else "model smollm2-135m:"  # the budget line / the model line
    for line in proc.stdout:
        if started in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("svdzip compress: interrupted while")
    assert not out.exists()
    if offload:
        assert "rerun the same command to resume" in err or not (tmp_path / "o.partial").exists()
    else:
        assert "nothing was written" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_output_that_cannot_fit_on_its_disk_is_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from svdzip import cli_checks

    ckpt = _checkpoint(tmp_path)
    usage = namedtuple("usage", "total used free")
    dense = cli_checks.checkpoint_bytes(ckpt)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * dense, 0, dense // 10))
    with pytest.raises(cli_checks.UsageError, match=r"GiB free on its disk, the compressed model needs at least"):
        cli_checks.disk_space(str(tmp_path / "out"), ckpt, 0.8, None)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * dense, 0, int(dense * 0.9)))
    assert "needs between" in cli_checks.disk_space(str(tmp_path / "out"), ckpt, 0.8, None)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * dense, 0, 2 * dense))
    assert cli_checks.disk_space(str(tmp_path / "out"), ckpt, 0.8, None) is None


def test_calibration_longer_than_the_model_positions_is_refused_before_a_forward():
    model = tiny("llama")
    limit = model.config.max_position_embeddings
    ids = torch.zeros(1, limit + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"calibration windows of {limit + 1} tokens exceed the model's {limit} positions"):
        sz.compress(model, CFG, ids, progress=False)
