"""Memory of the loss allocation's out-of-core Fisher pass (the block-wise backward that
`--recipe best --offload` runs first): peak anonymous memory above the process's base while
`Offloaded.block_output_fisher` runs, with the LM head's loss gradient taken over the whole
window at once (what svdzip did before 2026-12-07) and in slices of LOSS_CHUNK tokens (now), in
separate child processes of the same run; the two results' sums are compared too.

  python bench/bench_fisher_memory.py --model qwen2.5-0.5b --windows 8

Writes bench/results/fisher_memory_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _timing import machine, write_json
from bench_compress import AnonPeak, _anon_mb

HERE = Path(__file__).resolve()


def child(model: str, windows: int, chunk: int, out: str) -> dict:
    from transformers import AutoTokenizer

    from svdzip import data, models
    from svdzip.pipeline import fisher
    from svdzip.pipeline.memory import release_freed_memory
    from svdzip.pipeline.source import Offloaded

    path = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    calib = data.calibration_batches(tok, data.text_for("wiki", "calib"), windows, 512)
    source = Offloaded(path, dtype=torch.float32)  # the dtype bench_offload's fp32 checkpoint has
    release_freed_memory()
    fisher.LOSS_CHUNK = chunk
    base = _anon_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as spill, AnonPeak() as peak:
        acc = source.block_output_fisher(set(range(len(source.layers))), calib, Path(spill) / "s", progress=False)
    torch.save(acc, out)
    return {"chunk": chunk, "held_mb": peak.peak - base, "base_mb": base, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--windows", type=int, default=8, help="calibration windows (the loss_windows default)")
    ap.add_argument("--child", nargs=3, metavar=("CHUNK", "OUT", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        chunk, out, model = args.child
        print(json.dumps(child(model, args.windows, int(chunk), out)))
        return
    info = machine()
    rows, sums = [], {}
    with tempfile.TemporaryDirectory() as d:
        for chunk in (10**9, 64):  # the whole window (before), slices of 64 tokens (now)
            out = f"{d}/{chunk}.pt"
            r = subprocess.run([sys.executable, str(HERE), "--windows", str(args.windows), "--child", str(chunk), out,
                                args.model], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"child (chunk {chunk}) failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            sums[chunk] = torch.load(out)
            print(f"{args.model}: head over {'the whole window' if chunk > 10**8 else f'{chunk} tokens'}: "
                  f"{rows[-1]['held_mb']:.0f} MiB held above base ({rows[-1]['seconds']:.0f} s)")
    whole, sliced = sums[10**9], sums[64]
    rel = max(float(((sliced[b] - whole[b]).abs() / whole[b].abs().clamp_min(1e-30)).max()) for b in whole)
    print(f"largest relative difference of the Fisher sums: {rel:.2e}")
    write_json(f"fisher_memory_{args.model}.json", {"machine": info, "model": args.model, "windows": args.windows,
                                                    "rows": rows, "max_rel_diff": rel})


if __name__ == "__main__":
    main()
