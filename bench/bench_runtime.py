"""Runtime of SmolLM2-135M dense vs low-rank 0.8 / 0.6: Python eager, torch.compile, and the
AOTInductor package from `svdzip export` run from Python and from C++ (examples/cpp_generate).

  python bench/bench_runtime.py                 # one command: builds the C++ runner if needed
  python bench/bench_runtime.py --no-compile    # skip the torch.compile rows (minutes each)

Per model and runtime: prefill tok/s (one call over --prompt tokens) and decode tok/s (the median
of --new-tokens greedy steps of one token, batch 1; eager also batch 8, summed over the batch),
the spread of the steps (p10-p90), and the C++ process's peak resident MiB. Low-rank models use
plain SVD factors (speed depends only on the ranks; every method shares them at a ratio). The
AOTInductor rows use low-rank layers as aten matmuls (svdzip export's default) and, for the
compressed models, as svdzip's native op (`aoti-op`, Python only: the C++ runner links libtorch
alone). The C++ runner's tokens are compared with Python generate() on the 0.8 model.
Writes bench/results/runtime_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _timing import machine, write_json
import svdzip as sz
from svdzip import data, export, models
from svdzip.benchmark import inference_speed, model_bytes

ROOT = Path(__file__).resolve().parents[1]


def build_runner(build: Path) -> Path:
    exe = build / "svdzip_generate"
    subprocess.run(["cmake", "-S", ROOT / "examples/cpp_generate", "-B", build,
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", build, "-j2"], check=True, capture_output=True)
    return exe


def spread(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10)
    return {"decode_tok_s": 1 / statistics.median(times), "decode_p10_tok_s": 1 / q[8],
            "decode_p90_tok_s": 1 / q[0]}


def steps(call, prompt: torch.Tensor, new: int) -> dict:
    """Prefill in one call, then `new` one-token greedy steps; per-step times."""
    with torch.no_grad():
        t0 = time.perf_counter()
        logits = call(prompt, torch.arange(prompt.shape[1]))
        prefill = time.perf_counter() - t0
        nxt, pos, times, tokens = logits[:, -1].argmax(-1, keepdim=True), prompt.shape[1], [], []
        for _ in range(new):
            tokens.append(int(nxt))
            t0 = time.perf_counter()
            logits = call(nxt, torch.tensor([pos]))
            times.append(time.perf_counter() - t0)
            nxt, pos = logits[:, -1].argmax(-1, keepdim=True), pos + 1
    return {"prefill_tok_s": prompt.shape[1] / prefill, **spread(times[2:]), "tokens": tokens}


def cpp(exe: Path, package: Path, prompt: torch.Tensor, new: int, threads: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        r = subprocess.run([exe, package, str(new), "--threads", str(threads)], capture_output=True, text=True,
                           input=" ".join(map(str, prompt[0].tolist())), timeout=900)
        if r.returncode:
            raise RuntimeError(f"svdzip_generate failed: {r.stderr}")
        kv = dict(item.split("=") for item in r.stderr.split())
        runs.append({"tokens": [int(t) for t in r.stdout.split()], **{k: float(v) for k, v in kv.items()}})
    med = lambda key: statistics.median(run[key] for run in runs)  # noqa: E731
    dec = sorted(run["decode_tok_per_s"] for run in runs)
    return {"prefill_tok_s": prompt.shape[1] / med("prefill_s"), "decode_tok_s": med("decode_tok_per_s"),
            "decode_p10_tok_s": dec[0], "decode_p90_tok_s": dec[-1], "resident_mib": med("peak_rss_mib"),
            "tokens": runs[0]["tokens"]}


def eager_batch(model, prompt: torch.Tensor, new: int, batch: int, repeats: int) -> dict:
    r = inference_speed(model, prompt.expand(batch, -1), new, repeats)
    return {"prefill_tok_s": r["prefill_tok_s"] * batch, "decode_tok_s": r["decode_tok_s"] * batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--build", type=Path, default=ROOT / "build" / "generate", help="where the C++ runner is built")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exe = build_runner(args.build)
    _, tok = models.load("smollm2-135m")
    prompt = data.calibration_batches(tok, data.text_for("wiki", "calib"), 1, args.prompt)[:1]
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    rows, checks = [], []
    for ratio in [1.0, *args.ratios]:
        model = models.load_model("smollm2-135m", dtype=torch.float32)
        if ratio < 1.0:
            sz.compress(model, sz.SVDConfig(ratio=ratio), progress=False)
        name = "dense" if ratio == 1.0 else f"svd {ratio}"
        base = {"model": name, "ratio": ratio, "model_mib": model_bytes(model) / 2**20}

        def add(runtime, batch, r, seconds=None):
            row = {**base, "runtime": runtime, "batch": batch, **{k: v for k, v in r.items() if k != "tokens"}}
            if seconds is not None:
                row["build_s"] = seconds
            rows.append(row)
            print(f"{name:8s} {runtime:10s} b{batch} prefill {row['prefill_tok_s']:8.1f} tok/s  decode "
                  f"{row['decode_tok_s']:7.1f} tok/s" + (f"  {row['resident_mib']:.0f} MiB" if "resident_mib" in row
                                                         else ""), flush=True)
            return r

        eager = inference_speed(model, prompt, args.new_tokens, args.repeats)
        add("eager", 1, {"prefill_tok_s": eager["prefill_tok_s"], "decode_tok_s": eager["decode_tok_s"]})
        add("eager", 8, eager_batch(model, prompt, args.new_tokens, 8, args.repeats))
        paths = ["aten", "op"] if ratio < 1.0 else ["aten"]
        for path in paths:
            t0 = time.perf_counter()
            package = export.export_package(model, work / f"{ratio}_{path}.pt2", args.prompt + args.new_tokens + 8,
                                            lowrank=path, progress=lambda s: None)
            built = time.perf_counter() - t0
            run = export.load_package(package)
            r = add(f"aoti-{path}" if path != "aten" else "aoti-py", 1,
                    steps(lambda ids, pos: run(input_ids=ids, cache_position=pos), prompt, args.new_tokens), built)
            if path == "aten":
                c = add("aoti-c++", 1, cpp(exe, package, prompt, args.new_tokens, args.threads, args.repeats))
                with torch.no_grad():
                    want = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                          do_sample=False)[0, prompt.shape[1]:].tolist()
                checks.append({"model": name, "steps": args.new_tokens, "cpp_equals_python_generate": c["tokens"] == want,
                                "aoti_py_equals_python_generate": r["tokens"] == want,
                                "first_difference": next((i for i, (a, b) in enumerate(zip(c["tokens"], want))
                                                          if a != b), None)})
                print(f"{name}: C++ tokens == generate(): {checks[-1]['cpp_equals_python_generate']}", flush=True)
        if not args.no_compile:
            torch._dynamo.reset()
            model.forward = torch.compile(model.forward, fullgraph=True)
            t0 = time.perf_counter()
            comp = inference_speed(model, prompt, args.new_tokens, args.repeats, cache_implementation="static")
            add("compile", 1, {"prefill_tok_s": comp["prefill_tok_s"], "decode_tok_s": comp["decode_tok_s"]},
                time.perf_counter() - t0)
        del model
    dense = {r["runtime"] + str(r["batch"]): r["decode_tok_s"] for r in rows if r["ratio"] == 1.0}
    for r in rows:
        r["decode_vs_dense"] = r["decode_tok_s"] / dense[r["runtime"] + str(r["batch"])] \
            if r["runtime"] + str(r["batch"]) in dense else None
    path = write_json("runtime_cpu.json", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                           "rows": rows, "token_checks": checks})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
