"""Bytes for quality: svdzip's low-rank, quantized-factor and quantized-base + correction models
beside dense, round-to-nearest and GPTQ (llm-compressor, in its own environment:
bench/gptq_setup.sh) in one run, on the same calibration windows.

  python bench/bench_bytes.py --model smollm2-135m --max-windows 10
  python bench/bench_bytes.py --model smollm2-135m --rows rtn:4 gptq:4 corr:best:3:0.1:8

Rows (targets: every Linear in the decoder blocks; group 128 below 8 bits):
  rtn:BITS                      svdzip's round-to-nearest (QuantLowRankLinear at rank 0)
  gptq:BITS                     llm-compressor GPTQ, symmetric int, group 128 (the W4A16 preset's scheme)
  lr:RECIPE:RATIO:FACTOR_BITS   low-rank at kept RATIO, factors in 16 (the model's dtype), 8 or 4 bits
  corr:RECIPE:BASE:RATIO:FACTOR_BITS
                                RTN base in BASE bits + the pair fitted to its error, RATIO of the dense
                                parameters in the pair
RECIPE: best (--recipe best; uniform allocation under a base) or svd_llm (one-shot SVD-LLM).
Columns: bits per targeted weight as stored (codes, scales, factors), MiB of the targets, perplexity
per text, compression seconds, greedy decode tok/s at batch 1 (64 new tokens after 32, median of 3,
the integer kernels running). JSON: bench/results/bytes_<tag>.json, rows appended as they finish.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from _timing import machine, write_json
import svdzip as sz
from svdzip import data, eval as ev, models
from svdzip.nn import COMPRESSED, QuantLowRankLinear, QuantMatrix, stored_bits
from svdzip.pipeline.walk import decoder_layers

HERE = Path(__file__).resolve().parent
LLMC = HERE / ".venv-llmc" / "bin" / "python"
DEFAULT_ROWS = ["rtn:8", "rtn:4", "rtn:3", "gptq:4", "gptq:3", "lr:best:0.8:16", "lr:best:0.8:8",
                "lr:svd_llm:0.6:16", "lr:svd_llm:0.6:8", "corr:best:2:0.12:8", "corr:best:3:0.1:8",
                "corr:best:4:0.1:8"]


def _targets(model) -> list[tuple[nn.Module, str, nn.Linear]]:
    return [(parent, attr, child) for layer in decoder_layers(model) for parent in layer.modules()
            for attr, child in parent.named_children() if isinstance(child, nn.Linear)]


def _rtn(model, bits: int, group: int = 128) -> None:
    for parent, attr, lin in _targets(model):
        m, n = lin.weight.shape
        spec = {"rank": 0, "in_features": n, "out_features": m, "bias": lin.bias is not None,
                "factor_bits": 16, "base_bits": bits, "group_size": group}
        base = QuantMatrix.from_float(lin.weight, bits, group, attr)
        setattr(parent, attr, QuantLowRankLinear.from_parts(spec, None, None, base, lin.bias, lin.weight.dtype))


def _config(recipe: str, ratio: float, factor_bits: int, base_bits: int = 0):
    if recipe == "best":
        extra = {"allocation": "uniform"} if base_bits else {}
        return sz.recipe("best", ratio=ratio, factor_bits=factor_bits, base_bits=base_bits, **extra)
    return sz.SVDLLMConfig(ratio=ratio, factor_bits=factor_bits, base_bits=base_bits)


def _bits(model, dense_weights: int) -> float:
    """Stored bits of every compressed layer over the targeted dense weights."""
    return sum(stored_bits(m) for m in model.modules() if isinstance(m, COMPRESSED)) / dense_weights


def decode_tok_s(model, ids: torch.Tensor, new: int = 64, repeats: int = 3) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            times.append(time.perf_counter() - t0)
            assert out.shape[1] == ids.shape[1] + new
    return new / statistics.median(times)


def _gptq(args, bits: int, calib: torch.Tensor, work: Path) -> tuple[Path, dict]:
    if not LLMC.exists():
        raise SystemExit(f"gptq rows need llm-compressor's environment: run bash bench/gptq_setup.sh ({LLMC} missing)")
    calib_file = work / "calib.pt"
    torch.save(calib, calib_file)
    out = work / f"gptq{bits}"
    subprocess.run([str(LLMC), str(HERE / "gptq_run.py"), str(models.resolve(args.model)), str(calib_file),
                    str(out), "--bits", str(bits)], check=True)
    return out / "dense", json.loads((out / "gptq.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    ap.add_argument("--datasets", default="wiki,ptb")
    ap.add_argument("--max-windows", type=int, default=10)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    tag = args.tag or args.model.replace(".", "")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sets = args.datasets.split(",")
    model, tok = models.load(args.model, dtype="float32")
    bos = data.resolve_bos(tok, None)
    calib = data.calibration_batches(tok, n_samples=32, seqlen=512, bos=bos)
    prompt = calib[:1, :32]
    dense_weights = sum(lin.weight.numel() for _, _, lin in _targets(model))
    out = {"machine": machine(), "model": args.model, "args": vars(args), "target_weights": dense_weights,
           "eval_protocol": ev.protocol(tok, 512, args.max_windows, None), "rows": []}

    def record(name, m, bits, seconds, extra=None):
        ppl = ev.evaluate(m, tok, sets, 512, args.max_windows, progress=False, bos=bos)
        row = {"row": name, "bits_per_weight": bits, "target_mib": bits * dense_weights / 8 / 2**20, "ppl": ppl,
               "compress_seconds": seconds, "decode_tok_s": decode_tok_s(m, prompt), **(extra or {})}
        out["rows"].append(row)
        write_json(f"bytes_{tag}.json", out)
        print(f"{name:26s} {bits:6.3f} {row['target_mib']:8.1f} " + " ".join(f"{ppl[s]:9.2f}" for s in sets) +
              f" {seconds:8.1f} {row['decode_tok_s']:8.1f}", flush=True)

    print(f"{'row':26s} {'bits':>6s} {'MiB':>8s} " + " ".join(f"{s:>9s}" for s in sets) + f" {'comp s':>8s} {'tok/s':>8s}")
    record("dense", model, 32.0, 0.0)
    with tempfile.TemporaryDirectory() as work:
        for spec in args.rows:
            kind, *p = spec.split(":")
            if kind == "gptq":
                path, info = _gptq(args, int(p[0]), calib, Path(work))
                m, _ = models.load(str(path), dtype="float32")
                record(spec, m, info["bits_per_weight"], info["seconds"], {"gptq": info})
                continue
            m, _ = models.load(args.model, dtype="float32")
            t0 = time.perf_counter()
            if kind == "rtn":
                _rtn(m, int(p[0]))
            elif kind == "lr":
                sz.compress(m, _config(p[0], float(p[1]), int(p[2])), calib, progress=False)
            elif kind == "corr":
                sz.compress(m, _config(p[0], float(p[2]), int(p[3]), int(p[1])), calib, progress=False)
            else:
                raise SystemExit(f"row {spec!r}: unknown kind {kind!r}")
            record(spec, m, _bits(m, dense_weights), time.perf_counter() - t0)


if __name__ == "__main__":
    main()
