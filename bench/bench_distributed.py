"""One process x T threads vs N processes x T/N threads (torch.distributed, gloo) compressing the
same model with the same calibration, same run: wall time split into statistics, decomposition
and communication (per rank), bytes communicated per block, peak memory per rank, and how far the
factors of the two runs are apart; then the scaling model's constants and its prediction for
8 GPUs on Llama-3-8B shapes.

  python bench/bench_distributed.py --model smollm2-135m --configs svd_llm nsvd svd_llm:seq nsvd:seq

On a machine with C cores, N processes x C/N threads use the same cores as 1 x C: the
statistics GEMMs are the same FLOPs either way, so the split can only show what distribution
costs (communication, duplicated work, load balance) and what it gains where one process does
not use its threads well (the small, sequential parts of the decomposition). Every run is a
fresh child; "held" = the highest RssAnon of that rank (sampled every 20 ms) minus RssAnon
after the model is loaded. Results: bench/results/distributed_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _timing import machine, write_json
from bench_compress import AnonPeak, _anon_mb

from svdzip.config import build_config

HERE = Path(__file__).resolve()


def _config(spec: str, ratio: float):
    from svdzip.config import CONFIGS

    method, _, mode = spec.partition(":")
    return build_config(method, ratio=ratio, sequential=mode == "seq")


def child(args) -> None:
    """One rank (or the single process): compress, write this rank's figures (and rank 0's
    factors) to args.out."""
    import torch.distributed as dist

    import svdzip as sz
    from svdzip import data, models

    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    model, tok = models.load(args.model)
    calib = data.calibration_batches(tok, data.text_for("wiki", "calib"), args.n_samples, args.seqlen)
    cfg = _config(args.config, args.ratio)
    base = _anon_mb()
    t0 = time.perf_counter()
    with AnonPeak() as peak:
        rep = sz.compress(model, cfg, calib, progress=False)
    wall = time.perf_counter() - t0
    out = Path(args.out)
    blocks = len({m.name.split(".layers.")[1].split(".")[0] for m in rep.modules})
    d = rep.distributed or {"comm_bytes": 0, "comm_seconds": 0.0, "windows": [0, calib.shape[0]]}
    row = {"rank": rank, "world": world, "threads": args.threads, "wall_s": wall,
           "stats_s": rep.seconds_stats, "decompose_s": rep.seconds_decompose, "comm_s": rep.seconds_comm,
           "comm_bytes": d["comm_bytes"], "comm_bytes_per_block": d["comm_bytes"] / blocks,
           "windows": d["windows"], "held_mb": peak.peak - base, "blocks": blocks}
    (out / f"rank{rank}.json").write_text(json.dumps(row))
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.endswith((".A", ".B"))},
                  str(out / "model.safetensors"))  # the factors (the tied embedding cannot be saved twice)
    if world > 1:
        dist.destroy_process_group()


def _run(args, config: str, world: int, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    threads = max(args.threads // world, 1)
    child_args = [str(HERE), "--child", "--model", args.model, "--config", config, "--ratio", str(args.ratio),
                  "--n-samples", str(args.n_samples), "--seqlen", str(args.seqlen), "--threads", str(threads),
                  "--out", str(out)]
    launcher = [sys.executable] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run(launcher + child_args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{config} x{world} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads((out / f"rank{k}.json").read_text()) for k in range(world)]
    for row in rows:
        row["process_wall_s"] = time.perf_counter() - t0
    return rows


def _factor_gap(a: Path, b: Path) -> float:
    """Largest ‖A₁B₁ − A₂B₂‖ / ‖A₁B₁‖ over the modules (the product: free of SVD sign choices)."""
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    worst = 0.0
    for name in x:
        if name.endswith(".A"):
            stem = name[:-2]
            p = x[stem + ".A"].double() @ x[stem + ".B"].double()
            q = y[stem + ".A"].double() @ y[stem + ".B"].double()
            worst = max(worst, float((p - q).norm() / p.norm()))
    return worst


LINK = 100e9  # assumed: NCCL reduce / broadcast of large buffers between H100-class GPUs on NVLink


def _llama_blocks(shape: dict):
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    import svdzip as sz
    from svdzip.pipeline.walk import by_block, decoder_layers, find_targets

    with init_empty_weights():
        m = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    _, targets = find_targets(m, sz.SVDLLMConfig(ratio=0.8))
    return decoder_layers(m), by_block(targets)


def _balance(blocks: dict, ranks: int, window: int) -> float:
    """Decomposition time with `ranks` owners over time with one: per window of blocks, the
    most loaded owner's cost (pipeline/group.py's bin-packing and cost model) over the total."""
    from svdzip.pipeline.group import assign_owners, decompose_cost

    order, longest, total = sorted(blocks), 0.0, 0.0
    for k in range(0, len(order), window):
        targets = [t for b in order[k:k + window] for t in blocks[b]]
        owners = assign_owners(targets, ranks)
        load = [0.0] * ranks
        for t in targets:
            load[owners[t.name]] += decompose_cost(t.shape)
        longest += max(load)
        total += sum(load)
    return longest / total


def _comm_bytes(blocks: dict, ranks: int, factor_item: int = 2) -> float:
    """Per block, bytes through the busiest link: each distinct input's fp64 Gram reduced once
    (a ring reduce moves (N-1)/N of it per rank), a copy for each other owner of a module that
    shares it (worst case: k, v and up each on their own rank), the factors broadcast (bf16)."""
    from svdzip import rank

    b = blocks[min(blocks)]
    grams = 8 * sum(t.shape[1] ** 2 for t in b if t.attr in ("q_proj", "o_proj", "gate_proj", "down_proj"))
    copies = 8 * sum(t.shape[1] ** 2 for t in b if t.attr in ("k_proj", "v_proj", "up_proj"))
    factors = sum(factor_item * rank.rank_for_ratio(*t.shape, 0.8) * sum(t.shape) for t in b)
    return grams * (ranks - 1) / ranks + copies + factors


def project(runs: dict, n_samples: int, seqlen: int, ranks: int = 8) -> dict:
    """Llama-3-8B on `ranks` devices from this run's one-process constants (statistics seconds
    per block FLOP, decomposition seconds per m·n·min(m, n)), the bin-packing balance on its
    real shapes, and LINK bytes/s for the collectives. Times are on this CPU's rates; a device's
    own rates divide the compute terms (not measured here: no GPU was lent)."""
    from bench_offload import LLAMA, _flops

    from svdzip.pipeline.walk import decoder_layers, find_targets
    from svdzip import models
    from svdzip.pipeline.source import empty_model
    from svdzip.config import SVDLLMConfig

    small = empty_model(models.resolve("smollm2-135m"))
    _, st = find_targets(small, SVDLLMConfig(ratio=0.8))
    s_flops, d_flops = _flops(decoder_layers(small), st, n_samples * seqlen)
    out = {"assumptions": f"Llama-3-8B shapes, bf16, svd_llm at 0.8, {n_samples} x {seqlen} windows; "
                          f"rates fitted to this run's 1-process SmolLM2 rows; links {LINK / 1e9:.0f} GB/s",
           "ranks": ranks}
    layers, blocks = _llama_blocks(LLAMA["Llama-3-8B"])
    targets = [t for b in blocks.values() for t in b]
    big_s, big_d = _flops(layers, targets, n_samples * seqlen)
    comm = len(blocks) * _comm_bytes(blocks, ranks) / LINK
    for config, run in runs.items():
        one = run["one"][0]
        t_stats, t_dec = one["stats_s"] / s_flops * big_s, one["decompose_s"] / d_flops * big_d
        window = 1 if config.endswith(":seq") else ranks
        bal = _balance(blocks, ranks, window)
        t_n = t_stats / ranks + t_dec * bal + comm
        out[config] = {"one_device_h": (t_stats + t_dec) / 3600, "stats_h": t_stats / 3600,
                       "decompose_h": t_dec / 3600, "decompose_balance": bal, "comm_s": comm,
                       f"{ranks}_devices_h": t_n / 3600, "speed_up": (t_stats + t_dec) / t_n}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="svd_llm", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--configs", nargs="+", default=["svd_llm", "nsvd", "svd_llm:seq", "nsvd:seq"],
                   help="METHOD or METHOD:seq (sequential)")
    p.add_argument("--ratio", type=float, default=0.8)
    p.add_argument("--n-samples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=2, help="threads in all (split among the ranks)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--tag", default="cpu")
    p.add_argument("--work", default="/tmp/svdzip-bench-distributed")
    p.add_argument("--project-only", action="store_true",
                   help="recompute the projection from bench/results/distributed_<tag>.json")
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.project_only:
        from _timing import RESULTS

        results = json.loads((RESULTS / f"distributed_{args.tag}.json").read_text())
        results["projection"] = project(results["runs"], results["n_samples"], results["seqlen"])
        results.pop("llama3_8b_8gpu", None)
        print(json.dumps(results["projection"], indent=1))
        print(f"wrote {write_json(f'distributed_{args.tag}.json', results)}")
        return
    results = {"machine": machine(), "model": args.model, "ratio": args.ratio, "n_samples": args.n_samples,
               "seqlen": args.seqlen, "threads": args.threads, "ranks": args.ranks, "runs": {}}
    work = Path(args.work)
    for config in args.configs:
        one = _run(args, config, 1, work / config / "one")
        many = _run(args, config, args.ranks, work / config / "many")
        gap = _factor_gap(work / config / "one" / "model.safetensors", work / config / "many" / "model.safetensors")
        results["runs"][config] = {"one": one, "many": many, "max_product_rel_gap": gap}
        o = one[0]
        print(f"{config:12s} 1x{args.threads}: wall {o['wall_s']:.1f} s (stats {o['stats_s']:.1f}, "
              f"decompose {o['decompose_s']:.1f}), held {o['held_mb']:.0f} MiB")
        for r in many:
            print(f"{'':12s} rank {r['rank']}/{r['world']}x{r['threads']}: wall {r['wall_s']:.1f} s (stats "
                  f"{r['stats_s']:.1f}, decompose {r['decompose_s']:.1f}, comm {r['comm_s']:.1f}), "
                  f"{r['comm_bytes_per_block'] / 2**20:.1f} MiB/block, held {r['held_mb']:.0f} MiB, "
                  f"windows {r['windows']}")
        print(f"{'':12s} speed-up {o['wall_s'] / max(r['wall_s'] for r in many):.2f}x; "
              f"max ‖ΔAB‖/‖AB‖ {gap:.2e}")
        write_json(f"distributed_{args.tag}.json", results)
    results["projection"] = project(results["runs"], args.n_samples, args.seqlen)
    print(json.dumps(results["projection"], indent=1))
    print(f"wrote {write_json(f'distributed_{args.tag}.json', results)}")


if __name__ == "__main__":
    main()
