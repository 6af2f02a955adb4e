"""`svdzip plot` figures and `svdzip bench` output: files written, bad input named."""

import json

import pytest

import svdzip as sz
from svdzip import cli, plot

from tiny_models import calib, tiny

pytest.importorskip("matplotlib")
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny("llama")
    rep = sz.compress(model, sz.SVDLLMConfig(ratio=0.6), calib(), progress=False)
    return sz.save_compressed(model, tmp_path_factory.mktemp("m") / "out", report=rep)


def _quality_json(path, rows):
    path.write_text(json.dumps({"dense": {"wiki": 18.8}, "rows": rows}))
    return path


def test_quality_plot(tmp_path):
    rows = [{"method": m, "mode": "oneshot", "ratio": r, "ppl": {"wiki": 20 / r}}
            for m in ("svd_llm", "nsvd") for r in (0.9, 0.8, 0.6)]
    out = plot.plot_quality([_quality_json(tmp_path / "q.json", rows)], tmp_path / "q.png")
    assert out.read_bytes()[:4] == PNG
    assert not list(tmp_path.glob(".q.png.tmp*")), "temporary file left behind"


def test_quality_rows_keep_fp32_gram_rows_apart(tmp_path):
    row = {"method": "svd_llm", "mode": "oneshot", "ratio": 0.8, "ppl": {"wiki": 30.0}}
    rows, _ = plot.quality_rows([_quality_json(tmp_path / "q.json", [
        row, {**row, "gram_products": "fp32", "ppl": {"wiki": 31.0}}])])
    assert sorted((r["mode"], r["ppl"]["wiki"]) for r in rows) == [("oneshot", 30.0),
                                                                    ("oneshot, fp32 Gram", 31.0)]


def test_quality_plot_bad_input_names_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        plot.plot_quality([bad], tmp_path / "q.png")
    with pytest.raises(ValueError, match="no rows with ptb"):
        plot.plot_quality([_quality_json(tmp_path / "q.json", [
            {"method": "svd", "mode": "oneshot", "ratio": 0.8, "ppl": {"wiki": 5.0}}])], tmp_path / "q.png", "ptb")
    assert not (tmp_path / "q.png").exists()


@pytest.mark.parametrize("kind", ["errors", "ranks"])
def test_module_plots_from_saved_dir(tmp_path, saved, kind):
    out = tmp_path / f"{kind}.png"
    assert cli.main(["plot", kind, str(saved), "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == PNG


def test_module_plot_rejects_non_svdzip_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an svdzip output directory"):
        plot.plot_ranks(tmp_path, tmp_path / "r.png")


def test_spectra_plot(tmp_path):
    import torch

    s = torch.linspace(3, 1, 10)
    out = plot.plot_spectra({"layer": (s, s**2)}, tmp_path / "s.png")
    assert out.read_bytes()[:4] == PNG


def test_bench_ops_json(capsys):
    assert cli.main(["bench", "--skip-model", "--repeats", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["native"] is True
    assert len(res["ops"]) == 4
    assert all(r["torch_ms"] > 0 and r["svdzip_ms"] > 0 for r in res["ops"])
