"""Export a causal LM (compressed or dense) to one AOTInductor package a C++ program can run.

torch.export traces transformers' own exportable wrapper (transformers.integrations.executorch:
the model with a static KV cache held as buffers); AOTInductor compiles that graph into a .pt2
package (`torch::inductor::AOTIModelPackageLoader` in C++, `torch._inductor.aoti_load_package`
in Python). The package takes (input_ids (1, T), cache_position (T)) with 1 <= T <= max_seq_len
and returns the logits (1, T, vocab); the cache lives in the package between calls, a new
sequence starts at cache_position 0. No home-made runtime: the C++ side is libtorch's loader
(examples/cpp_generate).

svdzip's LowRankLinear reaches the graph as two aten matmuls (`lowrank="aten"`, the default:
the package needs nothing but libtorch) or as the svdzip::lowrank_linear custom op
(`lowrank="op"`: the process that runs the package must load svdzip's op library). The two
measured the same on SmolLM2 (bench/bench_runtime.py), so the default needs no extra library.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from . import ops
from .hf import base_model_type
from .nn import QuantLowRankLinear
from .pipeline.outdir import clean_stale

# Architectures whose export is tested (tests/test_export.py) and whose tokens match generate().
SUPPORTED = ("llama", "qwen2", "gemma3_text")
LOWRANK_PATHS = ops.LOWRANK_PATHS
DEVICES = ("cpu", "cuda")
SUFFIX = ".pt2"


class ExportError(ValueError):
    """The model, the options or the machine cannot make a package; the message says which."""


def check_export(model, max_seq_len: int, device: str, lowrank: str) -> None:
    """Everything that can be said before minutes of compiling: raises ExportError."""
    arch = base_model_type(model.config)
    if arch not in SUPPORTED:
        raise ExportError(f"export: architecture {arch!r} ({type(model).__name__}) is not supported; "
                          f"supported: {', '.join(SUPPORTED)}")
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantLowRankLinear)]
    if quantized:
        raise ExportError(f"export: {len(quantized)} quantized layers (e.g. {quantized[0]}) cannot be "
                          "exported yet; export a model compressed with 16-bit factors and no base")
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ExportError(f"export: max_seq_len = {max_seq_len!r} must be an integer >= 2")
    if limit is not None and max_seq_len > limit:
        raise ExportError(f"export: max_seq_len = {max_seq_len} is past {arch}'s limit of "
                          f"{limit} positions (config.max_position_embeddings)")
    if lowrank not in LOWRANK_PATHS:
        raise ExportError(f"export: lowrank = {lowrank!r} must be one of {', '.join(LOWRANK_PATHS)}")
    if device not in DEVICES:
        raise ExportError(f"export: device = {device!r} must be one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("export: device = 'cuda' but torch sees no CUDA device "
                          f"(torch {torch.__version__})")
    check_compiler()


def check_compiler() -> str:
    """The C++ compiler AOTInductor will call (CXX, else g++ / c++ / clang++), or ExportError."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, RuntimeError, OSError) as err:
        wanted = os.environ.get("CXX") or "g++"
        raise ExportError(f"export: AOTInductor needs a C++ compiler and found none ({wanted!r}: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}); install g++ "
                          "(apt-get install g++) or point CXX at one") from None


@contextlib.contextmanager
def _static_cache(model, max_seq_len: int, device: str):
    """The generation config transformers' exporter reads, restored afterwards."""
    from transformers import GenerationConfig

    before = model.generation_config
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static", max_length=max_seq_len,
        cache_config={"batch_size": 1, "max_cache_len": max_seq_len, "device": device})
    try:
        yield
    finally:
        model.generation_config = before


@contextlib.contextmanager
def _grouped_attention():
    """While tracing, transformers' SDPA attention passes enable_gqa=True instead of repeating
    each key/value head for its query heads (repeat_kv): under torch.export it would otherwise
    copy the whole static cache, every layer, every step (measured: the step cost grew with
    max_seq_len). TRANSFORMERS_SDPA_FORCE_GQA is transformers' own switch for this."""
    before = os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA")
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRANSFORMERS_SDPA_FORCE_GQA"]
        else:
            os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = before


def export_program(model, max_seq_len: int, device: str = "cpu", lowrank: str = "aten"):
    """torch.export of `model` with a static cache of max_seq_len positions, batch 1, the
    prompt length dynamic (1 .. max_seq_len)."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    check_export(model, max_seq_len, device, lowrank)
    model = model.to(device).eval()
    steps = torch.export.Dim("tokens", min=1, max=max_seq_len)
    example = torch.zeros(1, 2, dtype=torch.long, device=device)
    with _static_cache(model, max_seq_len, device), ops.lowrank_path(lowrank), _grouped_attention(), \
            torch.no_grad():
        wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_seq_len,
                                                        device=device)
        return wrapper.export(input_ids=example, cache_position=torch.arange(2, device=device),
                              dynamic_shapes={"input_ids": {1: steps}, "cache_position": {0: steps}})


def check_output_file(out, overwrite: bool = False) -> Path:
    """The package path, checked: ends in .pt2, not a directory, its directory exists, an
    existing file only with overwrite. Cheap: the CLI asks before loading the model."""
    out = Path(out)
    if out.suffix != SUFFIX:
        raise ExportError(f"export: output {out} must end in {SUFFIX} (AOTInductor's package format)")
    if out.is_dir():
        raise ExportError(f"export: output {out} is a directory; give a file name ending in {SUFFIX}")
    if out.exists() and not overwrite:
        raise ExportError(f"export: output {out} exists; nothing was written: choose another name or "
                          "pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ExportError(f"export: output directory {out.parent} does not exist")
    return out


def export_package(model, out, max_seq_len: int = 512, device: str = "cpu", lowrank: str = "aten",
                   overwrite: bool = False, progress=print) -> Path:
    """Export and AOTInductor-compile `model` into the file `out` (.pt2), written atomically
    (built beside it, renamed into place); an existing file is replaced only with overwrite."""
    out = check_output_file(out, overwrite)
    arch = base_model_type(model.config)
    progress(f"export: tracing {arch} with a static cache of {max_seq_len} positions")
    program = export_program(model, max_seq_len, device, lowrank)
    progress("export: compiling with AOTInductor (a minute or more)")
    metadata = {"svdzip.max_seq_len": str(max_seq_len), "svdzip.model_type": arch,
                "svdzip.lowrank": lowrank, "svdzip.vocab_size": str(model.config.vocab_size)}
    clean_stale(out.with_name(out.stem))  # staging files of killed exports of this name
    tmp = out.with_name(f".{out.stem}.saving-{os.getpid()}{SUFFIX}")
    try:
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": metadata})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # a failed compile leaves no half-written package
    return out


def load_package(path):
    """The package as a Python callable: runner(input_ids=..., cache_position=...) -> logits."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"load_package: {path} is not a file")
    try:
        return torch._inductor.aoti_load_package(str(path))
    except RuntimeError as err:
        raise ExportError(f"load_package: {path} is not a readable AOTInductor package "
                          f"({str(err).splitlines()[0]})") from None
