"""Issue-16 recipes on SmolLM2-135M: allocation (uniform / loss / sensitivity) × objective
(plain / compensated) × refinement, for svd_llm and nsvd at 0.8 and 0.6, fixed protocol, dense
baseline from the same run. Out of domain: ptb (never used for calibration) and "code" (Python
source, which no recipe was tuned on; svdzip/data.py).

  python bench/bench_recipes.py                                   # the README table
  python bench/bench_recipes.py --methods svd_llm --ratios 0.8 --recipes seq seq+comp

Each row runs in a fresh child process: its compression seconds and peak anonymous memory
(RssAnon sampled every 20 ms, bench_compress.AnonPeak) are its own. Rows are appended to
bench/results/recipes_<tag>.json as they finish, so a partial run keeps its numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _timing import machine, write_json

from svdzip.config import build_config

# name -> config fields (sequential / objective / allocation / refine)
_BLOCK = {"loss_importance": "block"}  # the loss allocation's default before "probe" existed
RECIPES = {
    "oneshot": {},
    "seq": {"sequential": True},
    # β = 0.5 (the default before the table below moved it to 0.25) unless the name says otherwise
    "seq+comp": {"sequential": True, "objective": "compensated", "compensation": 0.5},
    "loss": {"allocation": "loss", **_BLOCK},
    "loss+seq": {"allocation": "loss", "sequential": True, **_BLOCK},
    "loss+seq+comp": {"allocation": "loss", "sequential": True, "objective": "compensated", "compensation": 0.5,
                      **_BLOCK},
    "loss+seq+comp(β=0.25)": {"allocation": "loss", "sequential": True, "objective": "compensated",
                              "compensation": 0.25, **_BLOCK},
    # nsvd only: the best recipe with NSVD's stage 2 weighted by ASVD's channel scale (bench_nsvd_sweep)
    "loss+seq+comp(β=0.25)+s2=asvd": {"allocation": "loss", "sequential": True, "objective": "compensated",
                                      "compensation": 0.25, "stage2": "asvd", **_BLOCK},
    # the loss allocation priced by block-output probes (loss_importance="probe", the default now)
    "probe": {"allocation": "loss", "loss_importance": "probe"},
    "probe+seq+comp(β=0.25)+s2=asvd": {"allocation": "loss", "loss_importance": "probe", "sequential": True,
                                       "objective": "compensated", "compensation": 0.25, "stage2": "asvd"},
    "loss(fisher)": {"allocation": "loss", "loss_importance": "fisher"},
    "loss(fisher,floor 0)": {"allocation": "loss", "loss_importance": "fisher", "loss_min_ratio": 0.0},
    "loss(rel)": {"allocation": "loss", "loss_importance": "relative"},
    "loss(rel,floor 0)": {"allocation": "loss", "loss_importance": "relative", "loss_min_ratio": 0.0},
    "loss(rel)+seq+comp": {"allocation": "loss", "loss_importance": "relative", "sequential": True,
                           "objective": "compensated"},
    "seq+refine": {"sequential": True, "refine_epochs": 3, "refine_weighting": "none"},
    "seq+comp+refine": {"sequential": True, "objective": "compensated", "compensation": 0.5, "refine_epochs": 3,
                        "refine_weighting": "none"},
    "loss+seq+comp+refine": {"allocation": "loss", "sequential": True, "objective": "compensated", "compensation": 0.5,
                             "refine_epochs": 3, "refine_weighting": "none", **_BLOCK},
    # refinement: "refine" rows before refine_weighting existed used plain MSE (now "none")
    "loss+seq+comp(β=0.25)+refine(mse)": {"allocation": "loss", "sequential": True, "objective": "compensated",
                                          "compensation": 0.25, "refine_epochs": 3, "refine_weighting": "none",
                                          **_BLOCK},
    "loss+seq+comp(β=0.25)+refine(channel)": {"allocation": "loss", "sequential": True, "objective": "compensated",
                                             "compensation": 0.25, "refine_epochs": 3, "refine_weighting": "channel",
                                             **_BLOCK},
    "seq+comp(β=0.25)": {"sequential": True, "objective": "compensated", "compensation": 0.25},
    "sens": {"allocation": "sensitivity"},
    "sens+seq+comp": {"allocation": "sensitivity", "sequential": True, "objective": "compensated",
                      "compensation": 0.25},
}


def _child(spec: dict) -> dict:
    import torch

    import svdzip as sz
    from svdzip import data, eval as ev, models
    from svdzip.config import CONFIGS
    from bench_compress import AnonPeak, _status_mb

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tok = models.load("smollm2-135m")
    calib = data.calibration_batches(tok, n_samples=32, seqlen=512)
    cfg = build_config(spec["method"], ratio=spec["ratio"], **RECIPES[spec["recipe"]])
    t0, start_mb = time.perf_counter(), _status_mb("RssAnon")
    with AnonPeak() as peak:
        rep = sz.compress(model, cfg, calib, progress=False)
    seconds = time.perf_counter() - t0
    ppl = ev.evaluate(model, tok, spec["datasets"], 512, None, progress=False)
    alloc = rep.allocation or {}
    return {**spec, "ppl": ppl, "seconds": seconds, "peak_anon_mb": peak.peak - start_mb,
            "ratio_targets": rep.ratio_targets, "ratio_model": rep.ratio_model,
            "allocation_seconds": alloc.get("seconds_total"), "sensitivity_cached": alloc.get("cached"),
            "dense_modules": sum(1 for r in alloc.get("ratios", {}).values() if r >= 1),
            "module_ratios": alloc.get("ratios")}


def _dense(datasets) -> dict:
    import torch

    from svdzip import eval as ev, models

    torch.set_num_threads(2)
    model, tok = models.load("smollm2-135m")
    return ev.evaluate(model, tok, datasets, 512, None, progress=False)


def _run_child(what: str, payload) -> dict:
    proc = subprocess.run([sys.executable, __file__, f"--{what}", json.dumps(payload)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} {payload} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["svd_llm", "nsvd"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--rows", nargs="+", default=None,
                    help="explicit rows METHOD:RATIO:RECIPE, in this order (instead of the product)")
    ap.add_argument("--datasets", default="wiki,ptb,code")
    ap.add_argument("--tag", default="smollm2")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--dense", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        print(json.dumps(_child(json.loads(args.row))))
        return
    if args.dense:
        print(json.dumps({"ppl": _dense(json.loads(args.dense))}))
        return
    sets = args.datasets.split(",")
    out = {"machine": machine(), "protocol": vars(args), "rows": []}
    out["dense"] = _run_child("dense", sets)["ppl"]
    print(f"dense: {out['dense']}", flush=True)
    print(f"{'method':8s} {'ratio':>5s} {'recipe':22s} " + " ".join(f"{s:>9s}" for s in sets) +
          f" {'seconds':>8s} {'peak MiB':>8s}", flush=True)
    rows = ([(m, float(r), rc) for m, r, rc in (x.split(":") for x in args.rows)] if args.rows else
            [(m, r, rc) for m in args.methods for r in args.ratios for rc in args.recipes])
    for method, ratio, recipe in rows:
        row = _run_child("row", {"method": method, "ratio": ratio, "recipe": recipe, "datasets": sets})
        out["rows"].append(row)
        write_json(f"recipes_{args.tag}.json", out)
        print(f"{method:8s} {ratio:5.2f} {recipe:22s} " + " ".join(f"{row['ppl'][s]:9.2f}" for s in sets) +
              f" {row['seconds']:8.0f} {row['peak_anon_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
