"""`svdzip bench`: a quick subset of bench/ for your own machine (about a minute on 2 cores):
the native ops vs plain torch at SmolLM2 shapes, and SmolLM2 inference dense vs ratio 0.6.
The full, recorded benchmarks are the scripts in bench/."""

from __future__ import annotations

import json


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="quick speed check of ops and inference on this machine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-model", action="store_true", help="ops only (no SmolLM2 load/compress)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_bench)


def _op_rows(dev: str, repeats: int) -> list[dict]:
    import torch

    from . import ops
    from .benchmark import median_time
    from .rank import rank_for_ratio

    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(2048, 576, device=dev, generator=g)
    acc = torch.zeros(576, 576, device=dev)
    W = torch.randn(576, 576, device=dev, generator=g)
    m, n = 1536, 576
    k = rank_for_ratio(m, n, 0.6)
    Wd = torch.randn(m, n, device=dev, generator=g)
    A, B = torch.randn(m, k, device=dev, generator=g), torch.randn(k, n, device=dev, generator=g)
    xs = {t: torch.randn(t, n, device=dev, generator=g) for t in (1, 512)}
    cases = [("gram 2048x576 (addmm vs ours)", lambda: acc.addmm_(x.T, x), lambda: ops.gram_accumulate_(acc, x)),
             ("svd 576x576 (linalg.svd vs ours)", lambda: torch.linalg.svd(W, full_matrices=False),
              lambda: ops.batched_svd(W, 576))]
    for t, xt in xs.items():
        cases.append((f"linear {m}x{n} T={t} (dense vs rank {k})",
                      lambda xt=xt: torch.nn.functional.linear(xt, Wd), lambda xt=xt: ops.lowrank_linear(xt, A, B)))
    rows = []
    for name, ref, ours in cases:
        t_ref, t_our = (median_time(f, repeats=repeats, device=dev) for f in (ref, ours))
        rows.append({"case": name, "torch_ms": 1e3 * t_ref, "svdzip_ms": 1e3 * t_our, "speedup": t_ref / t_our})
    return rows


def _model_rows(dev: str, repeats: int) -> list[dict]:
    from . import api, data, models
    from .benchmark import inference_speed
    from .config import SVDConfig

    _, tok = models.load("smollm2-135m")
    prompt = data.calibration_batches(tok, data.text_for("wiki", "calib"), 1, 256)
    rows = []
    for ratio in (1.0, 0.6):
        model, _ = models.load("smollm2-135m")
        if ratio < 1:
            api.compress(model, SVDConfig(ratio=ratio), progress=False)
        model.to(dev).eval()
        rows.append({"model": "dense" if ratio == 1 else f"ratio {ratio}",
                     **inference_speed(model, prompt, new_tokens=16, repeats=max(1, repeats // 2))})
    return rows


def run_bench(args) -> int:
    import platform

    import torch

    from . import native_available

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {dev}: torch sees no CUDA device")
    res = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu",
           "torch_threads": torch.get_num_threads(), "native": native_available(),
           "ops": _op_rows(dev, args.repeats)}
    if not args.skip_model:
        res["inference"] = _model_rows(dev, args.repeats)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"device {res['device']}, torch threads {res['torch_threads']}")
    print(f"{'op':44s} {'torch ms':>9s} {'svdzip ms':>9s} {'speed-up':>8s}")
    for r in res["ops"]:
        print(f"{r['case']:44s} {r['torch_ms']:9.3f} {r['svdzip_ms']:9.3f} {r['speedup']:7.2f}x")
    for r in res.get("inference", []):
        print(f"SmolLM2 {r['model']:9s}: {r['model_mb']:5.0f} MiB, prefill {r['prefill_tok_s']:7.0f} tok/s, "
              f"decode {r['decode_tok_s']:6.1f} tok/s")
    return 0
