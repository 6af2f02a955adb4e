"""`svdzip export DIR OUT.pt2`: an AOTInductor package a C++ program runs (export.py)."""

from __future__ import annotations

LOWRANK_PATHS = ("aten", "op")  # export.LOWRANK_PATHS; repeated so --help never imports torch
DEVICES = ("cpu", "cuda")       # export.DEVICES


def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="compile a model into one AOTInductor package (.pt2) for C++ or Python",
        description="Traces the model with a static KV cache (torch.export, transformers' exportable "
                    "wrapper) and compiles it with AOTInductor. The package takes input_ids (1, T) and "
                    "cache_position (T) and returns logits; examples/cpp_generate runs it from C++.")
    p.add_argument("model", help="an svdzip output directory, a Hugging Face directory or a model alias")
    p.add_argument("out", help="the package file to write (ends in .pt2)")
    p.add_argument("--max-seq-len", type=int, default=512,
                   help="KV cache positions: prompt + generated tokens (default 512)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the package runs (default cpu)")
    p.add_argument("--lowrank", choices=LOWRANK_PATHS, default="aten",
                   help="low-rank layers as two aten matmuls (default: the package needs libtorch only) or "
                        "as svdzip's native op (the running process must load svdzip's op library)")
    p.add_argument("--dtype", default=None, help="load the model in this dtype (default: as saved)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func="cli_export:run_export")


def run_export(args) -> int:
    import time

    from .export import check_output_file, export_package
    from .models import load_model

    check_output_file(args.out, args.overwrite)  # before the model loads
    args.step(f"loading {args.model}")
    model = load_model(args.model, dtype=args.dtype)
    start = time.perf_counter()
    args.step("exporting")
    out = export_package(model, args.out, max_seq_len=args.max_seq_len, device=args.device,
                         lowrank=args.lowrank, overwrite=args.overwrite,
                         progress=lambda line: print(line, flush=True))
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {time.perf_counter() - start:.0f} s); run it with "
          f"examples/cpp_generate: svdzip_generate {out} N_NEW < prompt_ids.txt")
    return 0
