"""When does NSVD help? The nested decomposition swept against whitening alone (svd_llm), in
domain and on text unlike the calibration set, with the dense model in the same run.

  python bench/bench_nsvd_sweep.py                                    # SmolLM2, the full grid
  python bench/bench_nsvd_sweep.py --model qwen2.5-0.5b --tag qwen25-05b --max-windows 8
  python bench/bench_nsvd_sweep.py --calib wiki:0.75,code:0.25 --tag smollm2_mixed

Rows, at each ratio: svd_llm (= nsvd at first_fraction 1.0: stage 2 gets no rank), nsvd at each
first_fraction < 1 with stage 2 plain or asvd, and NID-I / NID-II (interpolative decomposition in
each stage) at --nid-fractions with a plain stage 2. NSVD-II is not a row: it equals NSVD-I up to
rounding (the SVD does not see which square root of the Gram whitens it). Statistics (Gram and
mean|x|, one-shot) come from the dense model once and serve every row. Texts: wiki (in domain),
ptb, code (Python source) and bg (Bulgarian Wikipedia), none but wiki used for calibration.
Rows are appended to bench/results/nsvd_sweep_<tag>.json as they finish;
`python bench/bench_nsvd_sweep.py --table bench/results/nsvd_sweep_<tag>.json` prints the
README's table of one.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from _timing import machine, write_json
import svdzip as sz
from svdzip import api, data, eval as ev, models
from svdzip.config import CONFIGS, build_config


def variants(args):
    """(label, method, config fields) of every row at one ratio."""
    yield "svd_llm (nsvd f=1.0)", "svd_llm", {}
    for f in args.fractions:
        if f < 1.0:
            for stage2 in args.stage2:
                yield f"nsvd f={f} s2={stage2}", "nsvd", {"first_fraction": f, "stage2": stage2}
    for f in args.nid_fractions:
        for v in args.nid:
            yield f"nid-{v} f={f}", "nid", {"first_fraction": f, "variant": v, "stage2": "plain"}


def table(path: str) -> str:
    """The README's markdown table of a sweep JSON: ppl per text, and each row's ratio to the
    svd_llm row at the same ratio (below 1 = better than whitening alone)."""
    res = json.loads(Path(path).read_text())
    sets = list(res["dense"])
    lines = ["| row | ratio | " + " | ".join(sets) + " | decomp s |", "|---|---|" + "---|" * len(sets) + "---|",
             "| dense | 1.0 | " + " | ".join(f"{res['dense'][s]:.2f}" for s in sets) + " | – |"]
    base = {r["ratio"]: r["ppl"] for r in res["rows"] if r["method"] == "svd_llm"}
    for r in res["rows"]:
        ref = base.get(r["ratio"])
        cells = [f"{r['ppl'][s]:,.1f}" + ("" if r["method"] == "svd_llm" or ref is None
                                          else f" ({r['ppl'][s] / ref[s]:.2f}×)") for s in sets]
        lines.append(f"| {r['label']} | {r['ratio']} | " + " | ".join(cells) + f" | {r['seconds_decompose']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.95, 0.9, 0.8, 0.7])
    ap.add_argument("--stage2", nargs="+", default=["plain", "asvd"], choices=["plain", "asvd"])
    ap.add_argument("--nid", nargs="+", default=["I", "II"], choices=["I", "II"])
    ap.add_argument("--nid-fractions", nargs="*", type=float, default=[1.0, 0.95], help="none: no NID rows")
    ap.add_argument("--datasets", default="wiki,ptb,code,bg")
    ap.add_argument("--max-windows", type=int, default=16, help="evaluation windows per text (bg has 15 on SmolLM2)")
    ap.add_argument("--calib", default="wiki", help="calibration spec, e.g. wiki or wiki:0.75,code:0.25")
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--tag", default="smollm2")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    sets = args.datasets.split(",")
    dense, tok = models.load(args.model)
    calib, mix = data.calibration_mix(tok, args.calib, args.n_samples, args.seqlen)
    out = {"machine": machine(), "protocol": vars(args), "calibration_mix": mix, "rows": []}
    t0 = time.perf_counter()
    out["dense"] = ev.evaluate(dense, tok, sets, args.seqlen, args.max_windows, progress=False)
    out["dense_eval_seconds"] = time.perf_counter() - t0
    print(f"dense: {out['dense']}  ({out['dense_eval_seconds']:.0f} s eval)", flush=True)
    t0 = time.perf_counter()
    stats = api.collect_statistics(dense, sz.SVDLLMConfig(), calib, {"gram", "abs_mean"}, progress=False)
    out["seconds_stats"] = time.perf_counter() - t0
    print(f"statistics: {out['seconds_stats']:.0f} s", flush=True)
    print(f"{'row':24s} {'ratio':>5s} " + " ".join(f"{s:>9s}" for s in sets) + f" {'decomp s':>8s}", flush=True)
    for ratio in args.ratios:
        for label, method, fields in variants(args):
            model = copy.deepcopy(dense)
            rep = sz.compress(model, build_config(method, ratio=ratio, **fields), calib, progress=False, stats=stats)
            ppl = ev.evaluate(model, tok, sets, args.seqlen, args.max_windows, progress=False)
            out["rows"].append({"label": label, "method": method, "ratio": ratio, **fields, "ppl": ppl,
                                "ratio_targets": rep.ratio_targets, "params_after": rep.model_params_after,
                                "seconds_decompose": rep.seconds_decompose,
                                "fallbacks": len(rep.fallbacks())})
            write_json(f"nsvd_sweep_{args.tag}.json", out)
            print(f"{label:24s} {ratio:5.2f} " + " ".join(f"{ppl[s]:9.2f}" for s in sets) +
                  f" {rep.seconds_decompose:8.1f}", flush=True)
            del model


if __name__ == "__main__":
    main()
