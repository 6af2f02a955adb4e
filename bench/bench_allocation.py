"""Rank allocation on SmolLM2-135M: uniform vs sensitivity (ASVD) vs last-L blocks (ResSVD),
per method and ratio, with the fixed protocol (32x512 calibration, wiki/ptb ppl).

  python bench/bench_allocation.py                                   # asvd, nsvd at 0.8, 0.6
  python bench/bench_allocation.py --methods svd_llm --ratios 0.6 --datasets wiki

One-shot statistics are collected once and shared. The sensitivity table is built in a fresh
cache directory (so its time is measured, not read back) unless --reuse-cache; it is keyed by
method options, not ratio, so the second ratio of a method reuses it. For each sensitivity row
the per-module ranks are drawn with `svdzip plot ranks` into bench/results/.
Writes bench/results/allocation_<tag>.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from _timing import RESULTS, machine, write_json
import svdzip as sz
from svdzip import api, data, eval as ev, models
from svdzip.config import CONFIGS, build_config
from svdzip.plot import plot_ranks


def config_for(method: str, ratio: float, allocation: str, last_fraction: float):
    if allocation == "last_blocks":
        return build_config(method, ratio=ratio, last_blocks=round(last_fraction * 30))
    return build_config(method, ratio=ratio, allocation=allocation)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["asvd", "nsvd"], choices=sorted(CONFIGS))
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--allocations", nargs="+", default=["uniform", "sensitivity", "last_blocks"],
                    choices=["uniform", "sensitivity", "last_blocks"])
    ap.add_argument("--last-fraction", type=float, default=0.75, help="last_blocks: L = round(f x 30)")
    ap.add_argument("--datasets", default="wiki,ptb")
    ap.add_argument("--max-windows", type=int, default=None, help="default: protocol (wiki 60, ptb 40)")
    ap.add_argument("--reuse-cache", action="store_true", help="read sensitivity tables from $SVDZIP_CACHE")
    ap.add_argument("--tag", default="smollm2")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    if not args.reuse_cache:
        os.environ["SVDZIP_CACHE"] = tempfile.mkdtemp(prefix="svdzip-alloc-")
    sets = args.datasets.split(",")
    model, tok = models.load("smollm2-135m")
    calib = data.calibration_batches(tok)
    out = {"machine": machine(), "args": vars(args), "rows": []}
    out["dense"] = ev.evaluate(model, tok, sets, max_windows=args.max_windows, progress=False)
    t0 = time.perf_counter()
    stats = api.collect_statistics(model, CONFIGS["asvd"](), calib, {"gram", "abs_mean"}, progress=False)
    out["seconds_shared_stats"] = time.perf_counter() - t0
    print(f"dense: {out['dense']}  shared statistics {out['seconds_shared_stats']:.0f} s", flush=True)
    print(f"{'method':7s} {'ratio':>5s} {'allocation':12s} {'achieved':>8s} " +
          " ".join(f"{s:>8s}" for s in sets) + f" {'alloc s':>8s} {'decomp s':>8s} {'ranks':>10s}", flush=True)
    for method in args.methods:
        for ratio in args.ratios:
            for allocation in args.allocations:
                cfg = config_for(method, ratio, allocation, args.last_fraction)
                m, _ = models.load("smollm2-135m")
                rep = sz.compress(m, cfg, calib, progress=False, stats=None if method == "svd" else stats)
                ppl = ev.evaluate(m, tok, sets, max_windows=args.max_windows, progress=False)
                ranks = [x.rank for x in m.modules() if isinstance(x, sz.LowRankLinear)]
                alloc = rep.allocation or {}
                row = {"method": method, "ratio": ratio, "allocation": allocation, "ppl": ppl,
                       "ratio_targets": rep.ratio_targets, "params_after": rep.model_params_after,
                       "low_rank_modules": len(ranks), "rank_min": min(ranks), "rank_max": max(ranks),
                       "seconds_allocation": alloc.get("seconds_total", 0.0),
                       "seconds_trials": alloc.get("trial_seconds"), "trials_cached": alloc.get("cached"),
                       "seconds_decompose": rep.seconds_decompose,
                       "module_ratios": alloc.get("ratios")}
                if allocation == "sensitivity":
                    with tempfile.TemporaryDirectory() as d:
                        sz.save_compressed(m, Path(d) / "model", report=rep)
                        png = plot_ranks(Path(d) / "model", RESULTS / f"ranks_{method}_{ratio}_{args.tag}.png")
                    row["ranks_png"] = str(png.relative_to(RESULTS.parent.parent))
                out["rows"].append(row)
                write_json(f"allocation_{args.tag}.json", out)
                print(f"{method:7s} {ratio:5.2f} {allocation:12s} {rep.ratio_targets:8.3f} " +
                      " ".join(f"{ppl[s]:8.2f}" for s in sets) +
                      f" {row['seconds_allocation']:8.0f} {rep.seconds_decompose:8.0f} "
                      f"{row['rank_min']:>4d}..{row['rank_max']:<4d}", flush=True)
                del m
    print(f"wrote {RESULTS / f'allocation_{args.tag}.json'}")


if __name__ == "__main__":
    main()
