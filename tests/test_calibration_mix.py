"""Mixed calibration sets: `--calib wiki:0.75,FILE:0.25`, drawn reproducibly, weights honoured."""
import json
import random

import pytest
import torch

from svdzip import data


class CharTokenizer:
    """One token per character (its code point); no BOS, like SmolLM2's convention."""
    bos_token_id = None

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        ids = [ord(c) for c in text]
        return type("Enc", (), {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids})()


@pytest.fixture
def two_files(tmp_path):
    rng = random.Random(0)
    lower, upper = tmp_path / "lower.txt", tmp_path / "upper.txt"
    lower.write_text("".join(rng.choice("abcdefghij") for _ in range(40 * 16)))
    upper.write_text("".join(rng.choice("ABCDEFGHIJ") for _ in range(30 * 16)))
    return str(lower), str(upper)


def test_parse_mix():
    assert data.parse_mix("wiki") == [("wiki", 1.0)]
    assert data.parse_mix("wiki:3,ptb:1") == [("wiki", 0.75), ("ptb", 0.25)]
    for bad in ("wiki,ptb", "wiki:0,ptb:1", "wiki:-1,ptb:2", "wiki:x,ptb:1", "wiki:1,wiki:1", " , "):
        with pytest.raises(ValueError):
            data.parse_mix(bad)


def test_mix_honours_weights_and_draws_reproducibly(two_files):
    lower, upper = two_files
    tok = CharTokenizer()
    spec = f"{lower}:0.75,{upper}:0.25"
    w, mix = data.calibration_mix(tok, spec, n_samples=8, seqlen=16, seed=5)
    assert w.shape == (8, 16)
    is_lower = (w >= ord("a")).all(1)
    assert int(is_lower.sum()) == 6 and int((w < ord("a")).all(1).sum()) == 2  # 75 % / 25 %, no mixed window
    assert [m["windows"] for m in mix] == [6, 2] and [m["weight"] for m in mix] == [0.75, 0.25]
    # every window is one of its source's consecutive windows
    pools = {src: data.windows(tok, open(src).read(), 16, None) for src in (lower, upper)}
    for row, low in zip(w, is_lower):
        assert (pools[lower if low else upper] == row).all(1).any()
    again, _ = data.calibration_mix(tok, spec, n_samples=8, seqlen=16, seed=5)
    other, _ = data.calibration_mix(tok, spec, n_samples=8, seqlen=16, seed=6)
    assert torch.equal(w, again) and not torch.equal(w, other)
    # the sources are interleaved, so a prefix (Fisher, sensitivity windows) sees both
    assert 0 < int(is_lower[:4].sum()) or 0 < int(is_lower[4:].sum())
    w3, mix3 = data.calibration_mix(tok, f"{lower}:1,{upper}:2", n_samples=7, seqlen=16)
    assert [m["windows"] for m in mix3] == [2, 5] and int((w3 >= ord("a")).all(1).sum()) == 2


def test_single_source_keeps_the_protocol(two_files):
    lower, _ = two_files
    tok = CharTokenizer()
    w, mix = data.calibration_mix(tok, lower, n_samples=4, seqlen=16)
    assert torch.equal(w, data.calibration_batches(tok, open(lower).read(), 4, 16))
    assert mix == [{"source": lower, "weight": 1.0, "windows": 4, "drawn": "first"}]


def test_mix_errors_name_the_source(two_files):
    lower, upper = two_files
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"upper.txt' gives only 30 windows of 16, 32 asked"):
        data.calibration_mix(tok, f"{lower}:0.5,{upper}:0.5", n_samples=64, seqlen=16)
    with pytest.raises(ValueError, match="rounds to none"):
        data.calibration_mix(tok, f"{lower}:0.99,{upper}:0.01", n_samples=8, seqlen=16)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.calibration_mix(tok, f"{lower}:0.5,nope.txt:0.5", n_samples=8, seqlen=16)


def test_cli_mixed_calibration_with_nid_reports_the_mix(tmp_path):
    from test_cli import svdzip

    notes = tmp_path / "notes.txt"
    notes.write_text(data.ptb_text("train")[:20000])
    out, rep = tmp_path / "out", tmp_path / "report.json"
    r = svdzip("compress", "smollm2-135m", str(out), "--method", "nid", "--ratio", "0.9",
               "--calib", f"wiki:0.5,{notes}:0.5", "--n-samples", "2", "--seqlen", "128",
               "--ignore", "*mlp*",
               "--json", str(rep))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "calibration mix: wiki 1 windows (50%), " in r.stdout
    cal = json.loads(rep.read_text())["report"]["calibration"]
    assert [m["source"] for m in cal["mix"]] == ["wiki", str(notes)] and cal["seed"] == 0
    assert [m["windows"] for m in cal["mix"]] == [1, 1]
    r = svdzip("compress", "smollm2-135m", str(tmp_path / "o2"), "--calib", "wiki:1,missing.txt:1")
    assert r.returncode != 0 and "missing.txt" in r.stderr and "Traceback" not in r.stderr


def test_unlike_texts_never_overlap_the_calibration_split():
    assert not set(data.CODE_MODULES) & set(data.CODE_CALIB_MODULES)
    calib, ev = data.text_for("code", "calib"), data.text_for("code", "eval")
    assert len(calib) > 500_000 and calib[:2000] not in ev
    bg = data.text_for("bg")
    letters = [c for c in bg if c.isalpha()]
    assert len(letters) > 5000 and sum("\u0400" <= c <= "\u04ff" for c in letters) > 0.8 * len(letters)
