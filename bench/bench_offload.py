"""In-memory vs out-of-core (--offload) compression on real models, same run: peak memory held,
time, identical factors; memory after each finished block; load_compressed's peak and time;
and the predicted peak / time for Llama-3-8B and -70B shapes from the measured constants.

  python bench/bench_offload.py --model smollm2-135m qwen2.5-0.5b --methods svd_llm nsvd
  python bench/bench_offload.py --model smollm2-135m --methods fwsvd svd_llm+sensitivity \
      --sensitivity-ratios 0.6 0.9 --tag cpu_prepass

A method "M+sensitivity" runs M with allocation="sensitivity" (each child with an empty table
cache of its own, so both modes run their trials); "best" is `--recipe best`.

  python bench/bench_offload.py --model qwen2.5-0.5b --methods best --memory-cap 0.5 --tag cpu_qwen_best

--memory-cap F runs the offloaded and the in-memory child in a memory cgroup limited to F x the
fp32 checkpoint's bytes, and records which completed and which was killed (proof, not estimate,
that the out-of-core run fits); without it the two modes run uncapped and are compared.

Every run is a fresh child process. "Held" = the highest RssAnon (sampled every 20 ms) minus
RssAnon just before the measured step, i.e. after import, tokenizer and calibration tokens,
which both modes share. Offloaded weights are read with safetensors (mmap): page-cache pages
are file-backed, reclaimable, and not in RssAnon. Results: bench/results/offload_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from _cgroup import run_capped
from _timing import machine, write_json
from bench_compress import AnonPeak, _anon_mb, _status_mb

from svdzip.config import build_config

HERE = Path(__file__).resolve()


def _setup(model: str, n_samples: int):
    from transformers import AutoTokenizer

    from svdzip import data, models
    from svdzip.pipeline.memory import release_freed_memory

    path = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    calib = data.calibration_batches(tok, data.text_for("wiki", "calib"), n_samples, 512)
    release_freed_memory()  # the corpus text is gone: do not count its freed heap as held
    return path, tok, calib


def _config(spec: str, sensitivity_ratios: list[float]):
    from svdzip.config import CONFIGS, recipe

    if spec == "best":
        return recipe("best", ratio=0.8)
    method, _, allocation = spec.partition("+")
    if not allocation:
        return CONFIGS[method](ratio=0.8)
    return build_config(method, ratio=0.8, allocation=allocation, sensitivity_ratios=tuple(sensitivity_ratios))


def child(kind: str, model: str, method: str, out: str, n_samples: int, sensitivity_ratios) -> dict:
    import svdzip as sz
    from svdzip.allocation import sensitivity
    from svdzip import models
    from svdzip.offload import compress_checkpoint
    from svdzip.pipeline import sink as sink_mod

    torch.manual_seed(0)
    path, tok, calib = _setup(model, n_samples)
    cfg = _config(method, sensitivity_ratios)
    cache = Path(out + ".sensitivity")  # a table cache of this child's own
    shutil.rmtree(cache, ignore_errors=True)
    sensitivity.cache_file = lambda key: cache / f"{key}.json"
    per_block = []
    write = sink_mod.ShardSink.write

    def spy(self, i, *a, **k):
        write(self, i, *a, **k)
        per_block.append(_anon_mb())

    sink_mod.ShardSink.write = spy
    base, fbase = _anon_mb(), _status_mb("RssFile")
    t0 = time.perf_counter()
    with AnonPeak() as peak, AnonPeak("RssFile") as fpeak:
        if kind == "mem":
            m, _ = models.load(str(path))
            rep = sz.compress(m, cfg, calib, progress=False)
            sz.save_compressed(m, out, tokenizer=tok, report=rep, overwrite=True)  # the bench's own scratch
        elif kind == "off":
            rep = compress_checkpoint(path, out, cfg, calib, tokenizer=tok, progress=False, overwrite=True)
        else:  # load
            m = sz.load_compressed(out)
            rep = None
    seconds = time.perf_counter() - t0
    res = {"kind": kind, "held_mb": peak.peak - base, "base_mb": base, "seconds": seconds,
           "file_mapped_peak_mb": fpeak.peak - fbase,
           "per_block_mb": [b - base for b in per_block]}
    if rep is not None:
        res.update(seconds_stats=rep.seconds_stats, seconds_decompose=rep.seconds_decompose,
                   seconds_compress=rep.seconds_total, allocation=rep.allocation)
    return res


def _run_child(*args, sensitivity_ratios=(), cap: int | None = None, may_die: bool = False) -> dict:
    """A measured child; under `cap` bytes (a memory cgroup) if given. `may_die`: an OOM kill is
    a result ({"killed": True, ...}), not a failure."""
    rc, out, err, seconds = run_capped([sys.executable, str(HERE), "--child", *map(str, args),
                                        ",".join(map(str, sensitivity_ratios))], cap)
    if rc != 0:
        if may_die and rc in (-9, 137):
            return {"kind": args[0], "killed": True, "seconds_until_killed": seconds, "cap_bytes": cap}
        raise SystemExit(f"child {args} failed (exit {rc}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return {**res, "killed": False, "cap_bytes": cap}


def _compare(a: Path, b: Path) -> dict:
    from svdzip.pipeline.checkpoint import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    same_names = set(ca.files) == set(cb.files)
    diff = max(float((ca.read(n).double() - cb.read(n).double()).abs().max()) for n in ca.files) \
        if same_names else float("nan")
    return {"same_tensor_names": same_names, "max_abs_diff": diff, "identical": same_names and diff == 0.0}


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def _slope(ys: list[float]) -> float:
    """Least-squares MB per block of the RssAnon after each finished block."""
    n = len(ys)
    if n < 2:
        return float("nan")
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def measure(model: str, method: str, n_samples: int, scratch: Path, sensitivity_ratios=(),
            cap: float | None = None) -> dict:
    """In memory, out of core and reloading, each a child, compared; with `cap` (a fraction of
    the fp32 checkpoint's bytes) only the two modes under that memory limit, and which completed."""
    from svdzip import models

    ckpt = models.resolve(model)
    mem, off = scratch / f"{model}-{method}-mem", scratch / f"{model}-{method}-off"
    for d in (mem, off):
        shutil.rmtree(d, ignore_errors=True)
    row = {"model": model, "method": method, "ratio": 0.8, "n_samples": n_samples,
           "checkpoint_bytes": _size(ckpt)}
    kw = {"sensitivity_ratios": sensitivity_ratios}
    limit = None if cap is None else int(cap * row["checkpoint_bytes"])
    if limit is not None:  # the proof alone: both modes under the cap (the uncapped comparison is a run of its own)
        row["memory_cap"] = {"fraction_of_checkpoint": cap, "bytes": limit}
        for key, kind, d in (("offloaded", "off", off), ("in_memory", "mem", mem)):
            row["memory_cap"][key] = _run_child(kind, model, method, d, n_samples, **kw, cap=limit, may_die=True)
        for d in (mem, off):
            shutil.rmtree(d, ignore_errors=True)
        return row
    row["in_memory"] = _run_child("mem", model, method, mem, n_samples, **kw)
    row["offloaded"] = _run_child("off", model, method, off, n_samples, **kw)
    row["load"] = _run_child("load", model, method, off, n_samples, **kw)
    row["compressed_bytes"] = _size(off)
    row["factors"] = _compare(mem, off)
    row["offloaded"]["growth_mb_per_block"] = _slope(row["offloaded"]["per_block_mb"])
    row["held_over_checkpoint"] = {k: row[k]["held_mb"] * 2**20 / row["checkpoint_bytes"]
                                   for k in ("in_memory", "offloaded")}
    row["time_ratio"] = row["offloaded"]["seconds"] / row["in_memory"]["seconds"]
    for d in (mem, off):
        shutil.rmtree(d, ignore_errors=True)
    return row


LLAMA = {"Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
         "Llama-3-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                             num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)}


def project(rows: list[dict], windows: int, seqlen: int) -> dict:
    """Predicted peak (pipeline/budget.py on Llama shapes, bf16, untied head) and CPU time from
    this run's constants: statistics seconds per block-FLOP (2 x params x tokens) and
    decomposition seconds per SVD-FLOP (sum of m n min(m, n) over the targets)."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    import svdzip as sz
    from svdzip.pipeline import budget
    from svdzip.pipeline.source import block_prefixes
    from svdzip.pipeline.walk import decoder_layers, find_targets

    fit = [r for r in rows if r["method"] == "svd_llm"] or rows
    stat_c = [r["offloaded"]["seconds_stats"] / r["_stat_flops"] for r in fit]
    dec_c = [r["offloaded"]["seconds_decompose"] / r["_svd_flops"] for r in fit]
    out = {"assumptions": f"bf16 weights, {windows} windows x {seqlen} tokens, svd_llm at 0.8, all "
                          f"blocks, statistics and SVDs at this machine's measured rates "
                          f"(max over the models measured: stat {max(stat_c):.3g} s/FLOP, "
                          f"svd {max(dec_c):.3g} s/FLOP); a GPU was not measured"}
    for name, shape in LLAMA.items():
        with init_empty_weights():
            m = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False, dtype=torch.bfloat16)).to(torch.bfloat16)
        layers = decoder_layers(m)
        _, targets = find_targets(m, sz.SVDLLMConfig(ratio=0.8))
        blocks: dict = {}
        for t in targets:
            blocks.setdefault(t.block, []).append(t)
        src = type("Shapes", (), {"model": m, "layers": layers, "dtype": torch.bfloat16,
                                  "prefixes": block_prefixes(m, layers)})
        parts = budget.estimate(src, blocks, (windows, seqlen), 1, {"gram"}, "fp64")
        flops = _flops(layers, targets, windows * seqlen)
        out[name] = {"peak_gib": parts["total"] / 2**30,
                     "parts_gib": {k: v / 2**30 for k, v in parts.items()},
                     "dense_checkpoint_gib": sum(p.numel() * 2 for p in m.parameters()) / 2**30,
                     "cpu_hours": (max(stat_c) * flops[0] + max(dec_c) * flops[1]) / 3600}
    return out


def _flops(layers, targets, tokens: int) -> tuple[float, float]:
    block_params = sum(p.numel() for layer in layers for p in layer.parameters())
    return 2.0 * block_params * tokens, float(sum(math.prod(t.shape) * min(t.shape) for t in targets))


def _add_flops(row: dict, n_samples: int) -> None:
    from svdzip.config import SVDLLMConfig
    from svdzip.pipeline.source import empty_model
    from svdzip.pipeline.walk import decoder_layers, find_targets
    from svdzip import models

    m = empty_model(models.resolve(row["model"]))
    _, targets = find_targets(m, SVDLLMConfig(ratio=0.8))
    row["_stat_flops"], row["_svd_flops"] = _flops(decoder_layers(m), targets, n_samples * 512)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, model, method, out, n, ratios = sys.argv[2:8]
        print(json.dumps(child(kind, model, method, out, int(n), [float(r) for r in ratios.split(",") if r])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--methods", nargs="+", default=["svd_llm", "nsvd"])
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--scratch", default="/tmp/svdzip-bench-offload")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--sensitivity-ratios", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                    help="candidate ratios for M+sensitivity methods")
    ap.add_argument("--memory-cap", type=float, default=None,
                    help="run both modes under a memory cgroup limit of this fraction of the fp32 checkpoint's "
                         "bytes, e.g. 0.5, and record which completes (root, cgroup v1)")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "rows": []}
    for model in args.model:
        for method in args.methods:
            row = measure(model, method, args.n_samples, scratch, args.sensitivity_ratios, args.memory_cap)
            payload["rows"].append(row)
            if "memory_cap" in row:
                c = row["memory_cap"]
                print(f"{model} {method} under a cap of {c['bytes'] / 2**20:.0f} MiB ({args.memory_cap}x the "
                      f"checkpoint): " + ", ".join(f"{k} {'killed' if c[k]['killed'] else 'completed'}"
                                                   for k in ("offloaded", "in_memory")), flush=True)
                write_json(f"offload_{args.tag}.json", payload)
                continue
            _add_flops(row, args.n_samples)
            o, i = row["offloaded"], row["in_memory"]
            print(f"{model} {method}: held in-memory {i['held_mb']:.0f} MiB, offloaded {o['held_mb']:.0f} MiB "
                  f"({row['held_over_checkpoint']['offloaded']:.2f}x the checkpoint's "
                  f"{row['checkpoint_bytes'] / 2**20:.0f} MiB); time {i['seconds']:.1f} vs {o['seconds']:.1f} s "
                  f"({row['time_ratio']:.2f}x); growth {o['growth_mb_per_block']:.1f} MiB/block; factors "
                  f"identical: {row['factors']['identical']}; load {row['load']['held_mb']:.0f} MiB held, "
                  f"{row['load']['seconds']:.1f} s, compressed {row['compressed_bytes'] / 2**20:.0f} MiB", flush=True)

            write_json(f"offload_{args.tag}.json", payload)
    if not any(r["method"] == "svd_llm" for r in payload["rows"]):
        return  # the projection is fitted to svd_llm's constants
    payload["projection"] = {"protocol": project(payload["rows"], args.n_samples, 512),
                             "long": project(payload["rows"], 128, 2048)}
    print(json.dumps(payload["projection"], indent=1))
    write_json(f"offload_{args.tag}.json", payload)


if __name__ == "__main__":
    main()
