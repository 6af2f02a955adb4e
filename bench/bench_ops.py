"""Native svdzip ops vs plain torch, same run, same shapes.

  python bench/bench_ops.py                 # SmolLM2 shapes on CPU
  python bench/bench_ops.py --shapes llama  # LLaMA-7B shapes (4096x4096, 11008x4096): ops_cpu_llama.json
  python bench/bench_ops.py --device cuda   # when the CUDA backend is built

Prints one row per case (torch ms, svdzip ms, speed-up) and writes bench/results/ops_<device>.json
(ops_<device>_<shapes>.json for --shapes llama|all).
"""

from __future__ import annotations

import argparse

import torch

from _timing import machine, median_time, write_json
from svdzip import ops

SMOL = [(576, 576), (192, 576), (1536, 576), (576, 1536)]   # (out, in)
LLAMA = [(4096, 4096), (11008, 4096)]


def rank_for(m: int, n: int, ratio: float) -> int:
    return int(ratio * m * n / (m + n))


# Each case is built in its own function call so its closures own their tensors
# (closures over a loop variable would all see the last shape).
def gram_case(dev, n, tokens=2048):
    x = torch.randn(tokens, n, device=dev)
    acc = torch.zeros(n, n, device=dev)
    return (f"gram fp32 {tokens}x{n}", lambda: acc.addmm_(x.T, x),
            lambda: ops.gram_accumulate_(acc, x), lambda: _gram_err(x))


def _gram_err(x):
    """Both results against an fp64 product: 'at equal accuracy' is part of the claim."""
    exact = x.double().T @ x.double()
    a = torch.zeros(x.shape[1], x.shape[1], device=x.device).addmm_(x.T, x)
    b = ops.gram_accumulate_(torch.zeros_like(a), x)
    rel = lambda t: float((t.double() - exact).abs().max() / exact.abs().max())
    return {"torch_rel_err": rel(a), "svdzip_rel_err": rel(b)}


def svd_case(dev, m, n):
    W = torch.randn(m, n, device=dev)
    return (f"svd {m}x{n}", lambda: torch.linalg.svd(W, full_matrices=False),
            lambda: ops.batched_svd(W, min(m, n)), None)


def model_svd_case(dev):
    """SmolLM2's 210 linear weights (30 blocks x q, k, v, o, gate, up, down), fp32: a
    torch.linalg.svd loop vs one batched_svd call per distinct shape."""
    per_block = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    counts: dict[tuple[int, int], int] = {}
    for shape in per_block:
        counts[shape] = counts.get(shape, 0) + 30
    mats = [torch.randn(c, *shape, device=dev) for shape, c in counts.items()]

    def loop():
        for batch in mats:
            for W in batch:
                torch.linalg.svd(W, full_matrices=False)

    def ours():
        for batch in mats:
            ops.batched_svd(batch, min(batch.shape[-2:]))

    return ("svd 210 SmolLM2 matrices (loop vs batched)", loop, ours, None)


def whitening_case(dev, n):
    x = torch.randn(4 * n, n, device=dev, dtype=torch.float64)
    G = x.T @ x
    return (f"whitening fp64 {n}", lambda: torch.linalg.cholesky(G),
            lambda: ops.whitening_factor(G), None)


def lowrank_cases(dev, m, n, tokens, ratio=0.6):
    k = rank_for(m, n, ratio)
    W = torch.randn(m, n, device=dev)
    A, B = torch.randn(m, k, device=dev), torch.randn(k, n, device=dev)
    x = torch.randn(tokens, n, device=dev)
    name = f"linear {m}x{n} r={k} T={tokens}"
    return [(f"{name} dense vs ours", lambda: torch.nn.functional.linear(x, W),
             lambda: ops.lowrank_linear(x, A, B), None),
            (f"{name} torch low-rank vs ours", lambda: (x @ B.T) @ A.T,
             lambda: ops.lowrank_linear(x, A, B), None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", choices=["smollm2", "llama", "all"], default="smollm2",
                    help="SmolLM2 shapes, LLaMA-7B shapes (slow on CPU) or both")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model-svd", action=argparse.BooleanOptionalAction, default=None,
                    help="SVD of all 210 SmolLM2 matrices (default: on for cuda, off for cpu)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    torch.manual_seed(0)
    dev = args.device
    shapes = {"smollm2": SMOL, "llama": LLAMA, "all": SMOL + LLAMA}[args.shapes]
    ins = sorted({n for _, n in shapes})
    cases = [gram_case(dev, n) for n in ins] + [svd_case(dev, m, n) for m, n in shapes]
    if args.model_svd if args.model_svd is not None else dev == "cuda":
        cases.append(model_svd_case(dev))
    cases += [whitening_case(dev, n) for n in ins]
    cases += [c for m, n in shapes for t in (1, 2048) for c in lowrank_cases(dev, m, n, t)]
    rows = []
    print(f"{'case':58s} {'torch ms':>10s} {'svdzip ms':>10s} {'speed-up':>9s}")
    for name, ref_fn, our_fn, extra in cases:
        reps = max(2, args.repeats // 3) if name.startswith("svd") else args.repeats
        t_ref = median_time(ref_fn, repeats=reps, device=dev)
        t_our = median_time(our_fn, repeats=reps, device=dev)
        row = {"case": name, "torch_ms": 1e3 * t_ref, "svdzip_ms": 1e3 * t_our,
               "speedup": t_ref / t_our}
        if extra:
            row.update(extra())
        rows.append(row)
        print(f"{name:58s} {row['torch_ms']:10.3f} {row['svdzip_ms']:10.3f} {row['speedup']:8.2f}x")
    suffix = "" if args.shapes == "smollm2" else f"_{args.shapes}"
    path = write_json(f"ops_{dev}{suffix}.json", {"machine": machine(dev), "repeats": args.repeats,
                                                  "shapes": args.shapes, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
