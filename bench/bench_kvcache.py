"""Low-rank KV cache on SmolLM2-135M: cache bytes per token, greedy decode tokens/s and wiki ppl,
dense cache vs latent cache, same run.

  python bench/bench_kvcache.py                        # CPU, cache ratios 0.5 and 0.25
  python bench/bench_kvcache.py --device cuda --method svd_llm

Only k_proj and v_proj are compressed, to rank = cache_ratio x (kv heads x head_dim), with
--method (default asvd, as in the ASVD paper) on the protocol's calibration set; everything
else stays dense. Per model: wiki ppl (protocol windows), then decode after a --context-token
prompt with transformers' DynamicCache and with svdzip's LowRankKVCache (prefill subtracted).
Bytes per token are measured from the tensors each cache holds after generation. The latent
cache runs twice: values rebuilt every step and values after attention. The three caches
take turns within each timing round.
Writes bench/results/kvcache_<method>_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from _timing import machine, write_json
import svdzip as sz
from svdzip import data, eval as ev, models
from svdzip.config import CONFIGS
from svdzip.kvcache import LowRankKVCache, cache_nbytes, kv_overrides


@torch.no_grad()
def decode(model, prompt, new_tokens: int, makers: dict, repeats: int, device: str) -> dict:
    """Per cache kind: decode tok/s (generate minus a prefill of the same prompt) and bytes/token.
    The kinds take turns within each round (one warm-up round first), so a slow spell of this
    noisy machine hits all of them rather than one; medians over the rounds."""
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
               pad_token_id=model.config.eos_token_id)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {k: {"prefill": [], "total": []} for k in makers}
    last = {}
    for rnd in range(repeats + 1):
        for kind, make in makers.items():
            sync()
            t0 = time.perf_counter()
            model(prompt, cache=make(), use_cache=True)
            sync()
            t1 = time.perf_counter()
            cache = make()
            seq = model.generate(prompt, cache=cache, **gen)
            sync()
            t2 = time.perf_counter()
            if rnd:
                times[kind]["prefill"].append(t1 - t0)
                times[kind]["total"].append(t2 - t1)
            if isinstance(last.get(kind, (None,))[0], LowRankKVCache):
                last[kind][0].close()
            last[kind] = (cache, seq)
    out = {}
    for kind, (cache, seq) in last.items():
        first, total = statistics.median(times[kind]["prefill"]), statistics.median(times[kind]["total"])
        tokens = cache.get_seq_length()
        out[kind] = {"decode_tok_s": (new_tokens - 1) / max(total - first, 1e-9),
                     "cache_bytes_per_token": cache_nbytes(cache) / tokens, "tokens_cached": tokens,
                     "sequence": seq[0].tolist()}
        if isinstance(cache, LowRankKVCache):
            cache.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", default="asvd", choices=sorted(CONFIGS))
    ap.add_argument("--cache-ratios", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--context", type=int, default=1024, help="prompt tokens before decoding")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-windows", type=int, default=None, help="wiki windows (default: protocol)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, tok = models.load("smollm2-135m")
    calib = data.calibration_batches(tok)
    prompt = data.calibration_batches(tok, data.text_for("wiki", "eval"), 1, args.context).to(args.device)
    rows = []
    print(f"{'model':14s} {'wiki ppl':>8s} {'cache':>7s} {'B/token':>8s} {'decode tok/s':>12s} "
          f"{'vs dense cache':>14s}", flush=True)
    for ratio in [None, *args.cache_ratios]:
        model, _ = models.load("smollm2-135m")
        t0 = time.perf_counter()
        if ratio is not None:
            cfg = CONFIGS[args.method](targets=("*k_proj", "*v_proj"), overrides=kv_overrides(model, ratio))
            sz.compress(model, cfg, calib, progress=False)
        compress_s = time.perf_counter() - t0
        model.to(args.device).eval()
        ppl = ev.evaluate(model, tok, ("wiki",), max_windows=args.max_windows, progress=False)["wiki"]
        name = "dense" if ratio is None else f"{args.method} kv {ratio}"
        makers = {"dynamic": lambda: DynamicCache(config=model.config)}
        if ratio is not None:
            # the default path (past values rebuilt every step) and values after attention, same run
            makers["lowrank"] = lambda: LowRankKVCache(model, values_after_attention=False)
            makers["after"] = lambda: LowRankKVCache(model, values_after_attention=True)
        res = decode(model, prompt, args.new_tokens, makers, args.repeats, args.device)
        dense = res["dynamic"]
        row = {"model": name, "cache_ratio": ratio, "wiki_ppl": ppl, "compress_seconds": compress_s,
               "dense_cache": dense}
        caches = [("dynamic", dense)]
        for kind, key in (("lowrank", "lowrank_cache"), ("after", "lowrank_cache_after_attention")):
            if kind in res:
                low = res[kind]
                low["same_tokens_as_dense_cache"] = low["sequence"] == dense["sequence"]
                row[key] = low
                caches.append((kind, low))
        for kind, r in caches:
            print(f"{name:14s} {ppl:8.2f} {kind:>7s} {r['cache_bytes_per_token']:8.0f} "
                  f"{r['decode_tok_s']:12.1f} {r['decode_tok_s'] / dense['decode_tok_s']:13.2f}x", flush=True)
        for _, r in caches:
            r.pop("sequence", None)
        rows.append(row)
        del model
    dev = torch.device(args.device).type
    path = write_json(f"kvcache_{args.method}_{dev}.json", {"machine": machine(dev), "args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
