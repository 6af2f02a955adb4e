"""Peak memory of one decoder block's statistics and decomposition, out of core: the block
loop's steps as they run inside `compress_checkpoint`, for one block, so a change to
`pipeline/decompose.py` can be weighed without a whole run.

  python bench/bench_block_memory.py --model qwen2.5-0.5b --method svd_llm --block 3

Reports RssAnon held above the state before each step (hidden states of the calibration set
entering the block, the block's weights onloaded): collect (statistics pass), then
apply_block as the loop runs it (owned statistics: each fp64 Gram replaced by its fp32 copy
once prepared, weightings freed after the SVDs) beside apply_block on statistics it may not
touch (owned=False: what every block did before), each in its own child process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from _timing import machine, write_json
from bench_compress import AnonPeak, _anon_mb

HERE = Path(__file__).resolve()


def child(model: str, method: str, block: int, n_samples: int, owned: bool) -> dict:
    from transformers import AutoTokenizer

    from svdzip import data, methods, models
    from svdzip.config import CONFIGS
    from svdzip.pipeline import loop, replay
    from svdzip.pipeline.decompose import apply_block
    from svdzip.pipeline.memory import release_freed_memory
    from svdzip.pipeline.source import Offloaded
    from svdzip.pipeline.streams import Streams
    from svdzip.pipeline.walk import by_block, find_targets
    from svdzip.report import Report

    path = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    calib = data.calibration_batches(tok, data.text_for("wiki", "calib"), n_samples, 512)
    cfg = CONFIGS[method](ratio=0.8)
    source = Offloaded(path)
    _, targets = find_targets(source.model, cfg)
    hidden, args = replay.capture(source.model, source.layers, calib, store=source.store)
    source.drop_resident()
    streams = Streams(hidden, args)
    layer = source.onload(block)
    job = loop.Job(cfg, methods.get(method), methods.required_stats(cfg), Report(method, {}), True, False)
    release_freed_memory()
    base = _anon_mb()
    with AnonPeak() as collect:
        stats = loop.collect_block(layer, by_block(targets)[block], streams, block, source.device, job, advance=True)
    release_freed_memory()
    mid = _anon_mb()
    with AnonPeak() as decompose:
        apply_block(by_block(targets)[block], stats, cfg, job.method, job.report, owned=owned)
    return {"owned": owned, "collect_held_mb": collect.peak - base, "stats_mb": mid - base,
            "apply_held_mb": decompose.peak - base}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, method, block, n, owned = sys.argv[2:7]
        print(json.dumps(child(model, method, int(block), int(n), owned == "1")))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--method", default="svd_llm")
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    rows = []
    for owned in (False, True):
        proc = subprocess.run([sys.executable, str(HERE), "--child", args.model, args.method, str(args.block),
                               str(args.n_samples), "1" if owned else "0"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{args.model} {args.method} block {args.block} owned={owned}: collect held "
              f"{r['collect_held_mb']:.0f} MiB (statistics {r['stats_mb']:.0f} MiB), apply_block held "
              f"{r['apply_held_mb']:.0f} MiB", flush=True)
    write_json(f"block_memory_{args.tag}.json", {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
