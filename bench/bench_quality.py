"""Quality table: method x ratio x (one-shot | sequential) -> wiki and ptb perplexity on
SmolLM2-135M with the fixed protocol (docs/methods.md), dense baseline in the same run.

  python bench/bench_quality.py                                   # issue-4 table (0.9 0.8 0.6)
  python bench/bench_quality.py --ratios 0.9 0.8 0.7 0.6 0.5 0.4 --modes oneshot
  python bench/bench_quality.py --methods svd_llm nsvd --modes sequential --max-windows 20

One-shot statistics (Gram, mean|x|, Fisher) are collected once from the dense model and
reused by every method and ratio; sequential runs collect their own. Rows are appended to
the JSON (bench/results/quality_<tag>.json) as they finish, so a partial run keeps its numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

from _timing import machine, write_json
import svdzip as sz
from svdzip import api, data, eval as ev, models
from svdzip.config import CONFIGS, build_config

ALL_METHODS = ["svd", "fwsvd", "asvd", "svd_llm", "nsvd", "ressvd"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.9, 0.8, 0.6])
    ap.add_argument("--modes", nargs="+", default=["oneshot", "sequential"], choices=["oneshot", "sequential"])
    ap.add_argument("--datasets", default="wiki,ptb")
    ap.add_argument("--max-windows", type=int, default=None, help="default: protocol (wiki 60, ptb 40)")
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--gram-products", choices=["fp64", "fp32"], default="fp64",
                    help="precision of each window's Gram product (config gram_products)")
    ap.add_argument("--tag", default="smollm2")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sets = args.datasets.split(",")
    model, tok = models.load("smollm2-135m")
    calib = data.calibration_batches(tok, n_samples=args.n_samples, seqlen=args.seqlen)
    out = {"machine": machine(), "protocol": vars(args), "rows": []}
    t0 = time.perf_counter()
    out["dense"] = ev.evaluate(model, tok, sets, args.seqlen, args.max_windows, progress=False)
    out["dense_eval_seconds"] = time.perf_counter() - t0
    print(f"dense: {out['dense']}  ({out['dense_eval_seconds']:.0f} s eval)", flush=True)

    shared: dict[str, tuple[dict, float]] = {}   # one-shot statistics by kind set

    def oneshot_stats(cfg):
        kinds = "fisher" if cfg.method == "fwsvd" else "gram+abs"
        if kinds not in shared:
            t = time.perf_counter()
            st = api.collect_statistics(model, cfg, calib, None if kinds == "fisher" else {"gram", "abs_mean"},
                                        progress=False)
            shared[kinds] = (st, time.perf_counter() - t)
        return shared[kinds]

    print(f"{'method':8s} {'mode':10s} {'ratio':>5s} {'achieved':>8s} " +
          " ".join(f"{s:>10s}" for s in sets) + f" {'stats s':>8s} {'decomp s':>8s}", flush=True)
    for mode in args.modes:
        for method in args.methods:
            if method == "fwsvd" and mode == "sequential":
                continue  # Fisher needs whole-model gradients: one-shot only
            for ratio in args.ratios:
                cfg = build_config(method, ratio=ratio, sequential=mode == "sequential",
                                      gram_products=args.gram_products)
                stats, stat_s = (oneshot_stats(cfg) if mode == "oneshot" and method != "svd" else (None, 0.0))
                m, _ = models.load("smollm2-135m")
                rep = sz.compress(m, cfg, calib, progress=False, stats=stats)
                ppl = ev.evaluate(m, tok, sets, args.seqlen, args.max_windows, progress=False)
                row = {"method": method, "mode": mode, "ratio": ratio, "ppl": ppl,
                       "gram_products": args.gram_products,
                       "ratio_targets": rep.ratio_targets, "ratio_model": rep.ratio_model,
                       "params_after": rep.model_params_after,
                       "seconds_stats": rep.seconds_stats + stat_s,
                       "seconds_decompose": rep.seconds_decompose,
                       "fallbacks": len(rep.fallbacks())}
                out["rows"].append(row)
                write_json(f"quality_{args.tag}.json", out)
                print(f"{method:8s} {mode:10s} {ratio:5.2f} {rep.ratio_targets:8.4f} " +
                      " ".join(f"{ppl[s]:10.2f}" for s in sets) +
                      f" {row['seconds_stats']:8.1f} {row['seconds_decompose']:8.1f}", flush=True)
                del m


if __name__ == "__main__":
    main()
