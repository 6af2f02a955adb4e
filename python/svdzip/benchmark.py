"""Timing helpers shared by `svdzip bench` and the scripts in bench/: medians after warm-up,
and end-to-end prefill/decode speed of a causal LM. No assertions here: numbers only."""

from __future__ import annotations

import statistics
import time

import torch


def median_time(fn, repeats: int = 7, warmup: int = 2, device: str = "cpu") -> float:
    """Median wall seconds of fn() over `repeats` runs after `warmup` runs (CUDA synchronised)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_bytes(model) -> int:
    """Bytes of the distinct parameters and buffers (tied weights counted once)."""
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


@torch.no_grad()
def inference_speed(model, prompt: torch.Tensor, new_tokens: int = 32, repeats: int = 3,
                    **generate_kwargs) -> dict:
    """Prefill tokens/s (one forward over `prompt`, shape (1, T)) and greedy decode tokens/s
    (generate() with the KV cache, exactly `new_tokens` new tokens, prefill time subtracted).
    `generate_kwargs` go to generate() (e.g. cache_implementation="static" for a compiled
    forward); the warm-up run of each timing absorbs compilation."""
    device = next(model.parameters()).device
    prompt = prompt.to(device)
    prefill = median_time(lambda: model(prompt, use_cache=False), repeats=repeats, warmup=1,
                          device=str(device))
    short = prompt[:, :16]
    first = median_time(lambda: model(short, use_cache=True), repeats=repeats, warmup=1, device=str(device))
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
               pad_token_id=model.config.eos_token_id, **generate_kwargs)
    total = median_time(lambda: model.generate(short, **gen), repeats=repeats, warmup=1, device=str(device))
    decode = max(total - first, 1e-9)
    return {"prefill_tokens": prompt.shape[1], "prefill_tok_s": prompt.shape[1] / prefill,
            "decode_tokens": new_tokens, "decode_tok_s": (new_tokens - 1) / decode,
            "model_mb": model_bytes(model) / 2**20}
