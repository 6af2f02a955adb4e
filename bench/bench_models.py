"""Quality, time and memory on real models of other families and dtypes, dense baseline in the
same run, each model's own BOS convention (recorded in the JSON).

  python bench/bench_models.py --model gemma3-270m                       # the issue-13 table
  python bench/bench_models.py --model qwen2.5-0.5b --max-windows 20
  python bench/bench_models.py --model smollm2-135m --dtype bfloat16 --rows svd_llm:oneshot:0.8 nsvd:oneshot:0.8 --tag smollm2_bf16

Rows are METHOD:MODE:RATIO[:ALLOCATION] (MODE oneshot | sequential), or best:RATIO (--recipe best). Each row compresses a
freshly loaded model; its peak memory is RssAnon sampled every 20 ms during compress (see
bench_compress.py), given as MiB above the loaded model and as a multiple of the model's size.
Rows are appended to bench/results/models_<tag>.json as they finish (a partial run keeps them).
"""

from __future__ import annotations

import argparse
import time

import torch

from _timing import machine, write_json
from bench_compress import AnonPeak, _anon_mb
import svdzip as sz
from svdzip import data, eval as ev, models
from svdzip.config import CONFIGS, build_config

DEFAULT_ROWS = [f"{m}:oneshot:0.8" for m in ("svd", "asvd", "svd_llm", "nsvd", "ressvd")] + \
    ["svd_llm:oneshot:0.6", "nsvd:oneshot:0.6", "ressvd:oneshot:0.6"] + \
    [f"{m}:sequential:0.8" for m in ("asvd", "svd_llm", "nsvd", "ressvd")] + \
    ["svd_llm:sequential:0.6", "nsvd:sequential:0.6", "ressvd:sequential:0.6", "nsvd:oneshot:0.8:sensitivity"]


def _row_config(spec: str):
    parts = spec.split(":")
    if parts[0] == "best" and len(parts) == 2:  # best:RATIO = --recipe best
        return sz.recipe("best", ratio=float(parts[1]))
    if len(parts) not in (3, 4) or parts[1] not in ("oneshot", "sequential"):
        raise SystemExit(f"row {spec!r}: expected METHOD:oneshot|sequential:RATIO[:ALLOCATION]")
    kw = {"ratio": float(parts[2]), "sequential": parts[1] == "sequential"}
    if len(parts) == 4:
        kw["allocation"] = parts[3]
    return build_config(parts[0], **kw)


def _model_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    ap.add_argument("--datasets", default="wiki,ptb")
    ap.add_argument("--max-windows", type=int, default=None, help="default: protocol (wiki 60, ptb 40)")
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--bos", default="auto", choices=["auto", "yes", "no"])
    ap.add_argument("--tag", default=None, help="default: the model alias (+ dtype if not float32)")
    args = ap.parse_args()
    cfgs = [(spec, _row_config(spec)) for spec in args.rows]  # fail on a bad row before any work
    tag = args.tag or args.model.replace(".", "") + ("" if args.dtype == "float32" else f"_{args.dtype}")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sets = args.datasets.split(",")
    bos = {"auto": None, "yes": True, "no": False}[args.bos]
    model, tok = models.load(args.model, dtype=args.dtype)
    use_bos = data.resolve_bos(tok, bos)
    calib = data.calibration_batches(tok, n_samples=args.n_samples, seqlen=args.seqlen, bos=use_bos)
    out = {"machine": machine(), "model": args.model, "dtype": args.dtype, "args": vars(args),
           "eval_protocol": ev.protocol(tok, args.seqlen, args.max_windows, bos),
           "model_mb": _model_mb(model), "rows": []}
    t0 = time.perf_counter()
    out["dense"] = ev.evaluate(model, tok, sets, args.seqlen, args.max_windows, progress=False, bos=use_bos)
    out["dense_eval_seconds"] = time.perf_counter() - t0
    print(f"{args.model} {args.dtype} (BOS {use_bos}): dense {out['dense']} "
          f"({out['dense_eval_seconds']:.0f} s eval, model {out['model_mb']:.0f} MiB)", flush=True)
    del model
    print(f"{'row':32s} {'achieved':>8s} " + " ".join(f"{s:>10s}" for s in sets) +
          f" {'stats s':>8s} {'decomp s':>8s} {'total s':>8s} {'peak MiB':>9s}", flush=True)
    for spec, cfg in cfgs:
        m, _ = models.load(args.model, dtype=args.dtype)
        base = _anon_mb()
        with AnonPeak() as anon:
            rep = sz.compress(m, cfg, calib, progress=False, calibration_info={"source": "wiki", "bos": use_bos})
        ppl = ev.evaluate(m, tok, sets, args.seqlen, args.max_windows, progress=False, bos=use_bos)
        row = {"row": spec, "method": cfg.method, "mode": "sequential" if cfg.calibration.sequential else "oneshot",
               "ratio": cfg.ratio, "allocation": cfg.strategy, "ppl": ppl,
               "ratio_targets": rep.ratio_targets, "ratio_model": rep.ratio_model,
               "params_after": rep.model_params_after, "seconds_stats": rep.seconds_stats,
               "seconds_decompose": rep.seconds_decompose, "seconds_total": rep.seconds_total,
               "peak_mb_above_model": anon.peak - base,
               "peak_memory_in_models": (anon.peak - base + out["model_mb"]) / out["model_mb"],
               "fallbacks": len(rep.fallbacks()), "dtype": rep.dtype, "calibration": rep.calibration,
               "balanced": sum(bool(x.notes.get("balanced_split")) for x in rep.modules)}
        out["rows"].append(row)
        write_json(f"models_{tag}.json", out)
        print(f"{spec:32s} {rep.ratio_targets:8.4f} " + " ".join(f"{ppl[s]:10.2f}" for s in sets) +
              f" {rep.seconds_stats:8.1f} {rep.seconds_decompose:8.1f} {rep.seconds_total:8.1f}"
              f" {row['peak_mb_above_model']:9.0f}", flush=True)
        del m


if __name__ == "__main__":
    main()
