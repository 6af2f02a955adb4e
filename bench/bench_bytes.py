"""Bytes for quality: svdzip's low-rank, quantized-factor and quantized-base + correction models
beside dense, round-to-nearest and GPTQ (llm-compressor, in its own environment:
bench/gptq_setup.sh) in one run, on the same calibration windows.

  python bench/bench_bytes.py --model smollm2-135m --max-windows 10
  python bench/bench_bytes.py --model smollm2-135m --rows rtn:4 gptq:4 corr:best:3:0.1:8

Rows (targets: every Linear in the decoder blocks; group 128 below 8 bits):
  rtn:BITS                      svdzip's round-to-nearest (QuantLowRankLinear at rank 0)
  gptq:BITS                     llm-compressor GPTQ, symmetric int, group 128 (the W4A16 preset's scheme), or
                                the largest of 64, 32 that divides every target's columns where 128 does not
                                (llm-compressor 0.14 refuses a partial group: SmolLM2's 576 columns -> 64)
  lr:RECIPE:RATIO:FACTOR_BITS   low-rank at kept RATIO, factors in 16 (the model's dtype), 8 or 4 bits
  corr:RECIPE:BASE:RATIO:FACTOR_BITS[:gptq]
                                svdzip's base in BASE bits (round to nearest, or its own GPTQ on the Gram
                                with :gptq) + the pair fitted to its error, RATIO of the dense parameters
                                in the pair
  caldera:RECIPE:BASE:RATIO:FACTOR_BITS:ROUNDS[:gptq]
                                the corr row with --base-rounds ROUNDS (CALDERA: the base rounded again to
                                what the pair leaves and the pair refitted, each module's best round kept)
  bits:RECIPE:BASE:BITS:FACTOR_BITS[:gptq]
                                a byte budget (--bits BITS): the ratio of the pair derived from it (BASE 0:
                                low-rank alone)
  gcorr:RECIPE:BASE:RATIO:FACTOR_BITS
                                the same on the GPTQ checkpoint of the gptq:BASE row (run it first): what
                                a user who brings an llm-compressor model gets (--base-from)
RECIPE: best (--recipe best; under a base with uniform allocation and the plain objective, the
compensated one ruins a model with a base) or svd_llm (one-shot SVD-LLM).
Columns: bits per targeted weight as stored (codes, scales, factors), MiB of the targets, perplexity
per text (as the model runs on this CPU: integer kernels fed bf16 activations), the first text's
perplexity again with the dequantised weights in fp32 ("ref": the quantization alone, without the
kernels' bf16 rounding), compression seconds, greedy decode tok/s at batch 1 (64 new tokens after
32, median of 3, the integer kernels running). JSON: bench/results/bytes_<tag>.json, rows appended as they finish.
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

from _timing import RESULTS, machine, write_json
import svdzip as sz
from svdzip import data, eval as ev, models
from svdzip.nn import COMPRESSED, QuantLowRankLinear, QuantMatrix, reference_math, stored_bits
from svdzip.pipeline.ctbase import read_base
from svdzip.pipeline.walk import decoder_layers

HERE = Path(__file__).resolve().parent
LLMC = HERE / ".venv-llmc" / "bin" / "python"
DEFAULT_ROWS = ["rtn:8", "rtn:4", "rtn:3", "gptq:4", "gptq:3", "lr:best:0.8:16", "lr:best:0.8:8", "lr:best:0.6:8",
                "corr:best:2:0.12:8", "corr:best:3:0.1:8", "corr:best:4:0.1:8", "corr:best:2:0.12:8:gptq",
                "corr:best:3:0.1:8:gptq", "gcorr:best:3:0.08:8", "gcorr:best:4:0.05:8"]


def _targets(model) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(name, parent, attribute, Linear) of every Linear in the decoder blocks."""
    layers = {id(layer) for layer in decoder_layers(model)}
    inside = [name for name, mod in model.named_modules() if id(mod) in layers]
    return [(name, model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2], mod)
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and any(name.startswith(p + ".") for p in inside)]


def _quantize_only(model, base_of) -> None:
    """Every target replaced by its base alone (rank 0), run by the integer kernels."""
    for name, parent, attr, lin in _targets(model):
        setattr(parent, attr, QuantLowRankLinear.base_only(base_of(name, lin), lin.bias, lin.weight.dtype))


def _config(recipe: str, ratio: float, factor_bits: int, base_bits: int = 0, base_from: str | None = None,
            group_size: int = 128, base_method: str = "rtn", bits: float | None = None, base_rounds: int = 1):
    kw = {"ratio": ratio, "factor_bits": factor_bits, "base_bits": base_bits, "base_from": base_from,
          "group_size": group_size, "base_method": base_method, "bits": bits, "base_rounds": base_rounds}
    if recipe == "best":  # under a base: uniform ratios and the plain objective (config_quant.py says why)
        return sz.recipe("best", **kw, **({"allocation": "uniform", "objective": "plain"} if base_bits else {}))
    return sz.build_config("svd_llm", **kw)


def _bits(model, names: list[str], dense_weights: int) -> float:
    """Stored bits of every target over the targeted dense weights: a compressed layer's codes,
    scales and factors, or the weight itself where the allocation left the module dense."""
    total = 0
    for name in names:
        m = model.get_submodule(name)
        total += stored_bits(m) if isinstance(m, COMPRESSED) else m.weight.numel() * torch.finfo(m.weight.dtype).bits
    return total / dense_weights


def decode_tok_s(model, ids: torch.Tensor, new: int = 64, repeats: int = 3) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            times.append(time.perf_counter() - t0)
            assert out.shape[1] == ids.shape[1] + new
    return new / statistics.median(times)


def gptq_group(columns: set[int]) -> int:
    return next(g for g in (128, 64, 32, 16, 8) if all(c % g == 0 for c in columns))


def _gptq(args, bits: int, group: int, calib: torch.Tensor, work: Path) -> tuple[Path, dict]:
    if not LLMC.exists():
        raise SystemExit(f"gptq rows need llm-compressor's environment: run bash bench/gptq_setup.sh ({LLMC} missing)")
    calib_file = work / "calib.pt"
    torch.save(calib, calib_file)
    out = work / f"gptq{bits}"
    subprocess.run([str(LLMC), str(HERE / "gptq_run.py"), str(models.resolve(args.model)), str(calib_file),
                    str(out), "--bits", str(bits), "--group", str(group)], check=True)
    return out / "ct", json.loads((out / "gptq.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    ap.add_argument("--datasets", default="wiki,ptb,code,bg")
    ap.add_argument("--max-windows", type=int, default=10)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the JSON (a row run again replaces its old one; each row "
                         "records when it ran); the dense row is measured again")
    args = ap.parse_args()
    tag = args.tag or args.model.replace(".", "")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sets = args.datasets.split(",")
    model, tok = models.load(args.model, dtype="float32")
    bos = data.resolve_bos(tok, None)
    calib = data.calibration_batches(tok, n_samples=32, seqlen=512, bos=bos)
    prompt = calib[:1, :32]
    names = [name for name, *_ in _targets(model)]
    dense_weights = sum(lin.weight.numel() for *_, lin in _targets(model))
    group = gptq_group({lin.in_features for *_, lin in _targets(model)})
    out = {"machine": machine(), "model": args.model, "args": vars(args), "target_weights": dense_weights,
           "gptq_group": group,
           "eval_protocol": ev.protocol(tok, 512, args.max_windows, None), "rows": []}
    previous = RESULTS / f"bytes_{tag}.json"
    if args.append and previous.is_file():
        out["rows"] = [r for r in json.loads(previous.read_text())["rows"]
                       if r["row"] != "dense" and r["row"] not in args.rows]

    def record(name, m, bits, seconds, extra=None):
        ppl = ev.evaluate(m, tok, sets, 512, args.max_windows, progress=False, bos=bos)
        with reference_math():
            ref = ev.evaluate(m, tok, sets[:1], 512, args.max_windows, progress=False, bos=bos)
        row = {"row": name, "ran": time.strftime("%Y-%m-%d %H:%M"), "bits_per_weight": bits, "target_mib": bits * dense_weights / 8 / 2**20, "ppl": ppl,
               "ppl_reference_math": ref,
               "compress_seconds": seconds, "decode_tok_s": decode_tok_s(m, prompt), **(extra or {})}
        out["rows"].append(row)
        write_json(f"bytes_{tag}.json", out)
        print(f"{name:26s} {bits:6.3f} {row['target_mib']:8.1f} " + " ".join(f"{ppl[s]:9.2f}" for s in sets) +
              f" {ref[sets[0]]:9.2f}" +
              f" {seconds:8.1f} {row['decode_tok_s']:8.1f}", flush=True)

    print(f"{'row':26s} {'bits':>6s} {'MiB':>8s} " + " ".join(f"{s:>9s}" for s in sets) +
          f" {sets[0] + ' ref':>9s} {'comp s':>8s} {'tok/s':>8s}")
    record("dense", model, 32.0, 0.0)
    with tempfile.TemporaryDirectory() as work:
        for spec in args.rows:
            kind, *p = spec.split(":")
            m, _ = models.load(args.model, dtype="float32")
            if kind == "gptq":  # GPTQ's codes and scales, read into svdzip's layers: the same kernels run them
                bits = int(p[0])
                ct, info = _gptq(args, bits, group, calib, Path(work))
                _quantize_only(m, lambda name, lin: read_base(ct, name, tuple(lin.weight.shape), bits, group))
                record(spec, m, _bits(m, names, dense_weights), info["seconds"], {"gptq": info})
                continue
            t0 = time.perf_counter()
            if kind == "rtn":
                bits = int(p[0])
                _quantize_only(m, lambda name, lin: QuantMatrix.from_float(lin.weight, bits, 128, name))
            elif kind == "lr":
                sz.compress(m, _config(p[0], float(p[1]), int(p[2])), calib, progress=False)
            elif kind == "bits":
                cfg = _config(p[0], 0.8, int(p[3]), int(p[1]), None, 128, p[4] if len(p) > 4 else "rtn", float(p[2]))
                sz.compress(m, cfg, calib, progress=False)
            elif kind == "caldera":
                cfg = _config(p[0], float(p[2]), int(p[3]), int(p[1]), None, 128, p[5] if len(p) > 5 else "rtn",
                              base_rounds=int(p[4]))
                sz.compress(m, cfg, calib, progress=False)
            elif kind in ("corr", "gcorr"):
                ct = str(Path(work) / f"gptq{p[1]}" / "ct") if kind == "gcorr" else None  # the gptq row's
                if ct and not Path(ct).is_dir():
                    raise SystemExit(f"row {spec!r} needs the row gptq:{p[1]} before it")
                cfg = _config(p[0], float(p[2]), int(p[3]), int(p[1]), ct, group if ct else 128,
                              p[4] if len(p) > 4 else "rtn")
                sz.compress(m, cfg, calib, progress=False)
            else:
                raise SystemExit(f"row {spec!r}: unknown kind {kind!r}")
            record(spec, m, _bits(m, names, dense_weights), time.perf_counter() - t0)


if __name__ == "__main__":
    main()
