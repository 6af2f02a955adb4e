"""End-to-end inference speed and size of SmolLM2-135M, dense vs compressed, same run.

  python bench/bench_inference.py                     # CPU, ratios 0.8 and 0.6
  python bench/bench_inference.py --device cuda
  python bench/bench_inference.py --compile           # + each model under torch.compile, static cache

Prefill: one forward over --prefill tokens. Decode: greedy generate() with the KV cache,
--new-tokens tokens after a 16-token prompt (prefill time subtracted). Compressed models use
plain SVD factors: speed depends only on the ranks, which every method shares at a given ratio.
Writes bench/results/inference_<device>.json.
"""

from __future__ import annotations

import argparse

import torch

from _timing import machine, write_json
import svdzip as sz
from svdzip import data, models
from svdzip.benchmark import inference_speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true",
                    help="also each model compiled: torch.compile(forward, fullgraph=True), static KV cache")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    _, tok = models.load("smollm2-135m")
    prompt = data.calibration_batches(tok, data.text_for("wiki", "calib"), 1, args.prefill)
    rows = []
    print(f"{'model':10s} {'MiB':>7s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'prefill x':>9s} {'decode x':>8s}")
    for ratio in [1.0, *args.ratios]:
        model, _ = models.load("smollm2-135m")
        if ratio < 1.0:
            sz.compress(model, sz.SVDConfig(ratio=ratio), progress=False)
        model.to(args.device).eval()
        name = "dense" if ratio == 1.0 else f"svd {ratio}"
        modes = [("", {})]
        if args.compile:
            modes.append((" compiled", {"cache_implementation": "static"}))
        for suffix, gen in modes:
            if suffix:
                torch._dynamo.reset()  # the models share code objects: each compile starts afresh
                model.forward = torch.compile(model.forward, fullgraph=True)
            r = {"model": name + suffix, "ratio": ratio, "compiled": bool(suffix),
                 **inference_speed(model, prompt, args.new_tokens, args.repeats, **gen)}
            base = rows[0] if rows else r  # dense eager
            r["prefill_speedup"] = r["prefill_tok_s"] / base["prefill_tok_s"]
            r["decode_speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
            rows.append(r)
            print(f"{r['model']:19s} {r['model_mb']:7.0f} {r['prefill_tok_s']:14.0f} {r['decode_tok_s']:13.1f} "
                  f"{r['prefill_speedup']:8.2f}x {r['decode_speedup']:7.2f}x", flush=True)
        del model
    dev = torch.device(args.device).type
    path = write_json(f"inference_{dev}{'_compiled' if args.compile else ''}.json",
                      {"machine": machine(dev), "args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
