"""The flags of `svdzip compress` and `svdzip eval`, and the config they make (the runs: cli_run.py)."""

from __future__ import annotations

import argparse
import dataclasses

from .cli_checks import UsageError, positive_int, window_length
from .config import (ALLOCATIONS, BASE_BITS, BASE_METHODS, CONFIGS, FACTOR_BITS, GRAM_PRODUCTS, GROUP_SIZES, LOSS_IMPORTANCES, OBJECTIVES, RECIPES, REFINE_WEIGHTINGS,
                     WEIGHTINGS, CompressConfig, method_name)



# config fields set by a flag of the same name (--loss-windows -> loss_windows): their choices and
# defaults come from config.py, so the help can never disagree with the config
CONFIG_FLAGS = {
    "allocation": ("per-module ratios: uniform, last_blocks (with --last-blocks), sensitivity (ASVD "
                   "trials, cached in $SVDZIP_CACHE/sensitivity) or loss (no trials: whitened spectra "
                   "priced by the loss, budget solved exactly)", str, ALLOCATIONS),
    "loss_importance": ("--allocation loss: how a module's output error is priced (probe: each module "
                        "truncated alone, its block's output change scored with the Fisher there)", str,
                        LOSS_IMPORTANCES),
    "loss_windows": ("--allocation loss: calibration windows of the Fisher backward", int, None),
    "loss_probe_windows": ("--loss-importance probe: windows each probe reruns its block on", int, None),
    "loss_probe_ratio": ("--loss-importance probe: the ratio each module is truncated to", float, None),
    "loss_min_ratio": ("--allocation loss: the lowest ratio any module gets (0 = rank 1)", float, None),
    "sensitivity_ratios": ("candidate ratios of the sensitivity trials", float, None),
    "sensitivity_windows": ("calibration windows the trials are scored on", int, None),
    "sensitivity_seqlen": ("their length", int, None),
    "gram_products": ("precision of each window's Gram product (the sum is fp64 either way; fp32 ~2x "
                      "faster on CPU)", str, GRAM_PRODUCTS),
    "objective": ("compensated: fit each layer, fed the compressed model's inputs, to the dense layer's "
                  "outputs (needs --sequential and a whitened method)", str, OBJECTIVES),
    "compensation": ("--objective compensated: strength beta in [0, 1]", float, None),
    "refine_epochs": ("block-wise refinement (needs --sequential): epochs of Adam on each block's factors "
                      "against the dense block's outputs (0 = off)", int, None),
    "refine_lr": ("refinement learning rate", float, None),
    "refine_weighting": ("refinement error: per-channel standardised (channel) or plain MSE (none)", str,
                         REFINE_WEIGHTINGS),
}
QUANT_FLAGS = {  # bytes: docs/usage.md "Bytes"
    "factor_bits": ("store the factors A, B in 8 bits (per row) or 4 bits (groups of --group-size), run by "
                    "torch's integer kernels; 16 = the model's dtype", int, FACTOR_BITS),
    "base_bits": ("also store the weight itself round-to-nearest in this many bits and fit the factors to "
                  "its error (then --ratio is the share the correcting factors keep, e.g. 0.05); 0 = none",
                  int, BASE_BITS),
    "base_method": ("--base-bits: round the base to nearest (rtn) or by GPTQ on the layer's input Gram (gptq)",
                    str, BASE_METHODS),
    "group_size": ("columns per quantization group below 8 bits", int, GROUP_SIZES),
    "bits": ("a byte budget instead of --ratio: average bits per targeted weight as stored (codes, scales, "
             "factors), e.g. 4.25; the largest uniform ratio that fits is used", float, None),
    "base_from": ("use the quantized weights of this compressed-tensors checkpoint (llm-compressor's GPTQ, "
                  "symmetric 2-4 bit groups) as the base and fit the factors to its error; --base-bits and "
                  "--group-size default to the checkpoint's", str, None),
}
METHOD_FLAGS = {  # fields of some methods only: (help, type, choices)
    "alpha": ("asvd: exponent of the channel scaling", float, None),
    "stat": ("asvd: channel statistic", str, ("mean", "max")),
    "variant": ("nsvd/nid: Cholesky (I) or eigen (II) stage 1", str, ("I", "II")),
    "first_fraction": ("nsvd/nid/ressvd: share of the rank in stage 1", float, None),
    "stage1": ("nsvd/nid/ressvd: weighting of stage 1", str, WEIGHTINGS),
    "stage2": ("nsvd/nid/ressvd: weighting of stage 2", str, WEIGHTINGS),
    "last_fraction": ("ressvd: fraction of blocks compressed (from the end)", float, None),
}


def _defaults() -> dict:
    """Each config field's default, from the dataclasses; a method option's per method
    ("nid plain, nsvd asvd") where the methods differ."""
    out = {f.name: f.default for f in dataclasses.fields(CompressConfig)}
    own: dict[str, dict] = {}
    for method, cls in sorted(CONFIGS.items()):
        for f in dataclasses.fields(cls):
            if f.name not in out:
                own.setdefault(f.name, {})[method] = f.default
    for name, per in own.items():
        values = set(map(str, per.values()))
        out[name] = values.pop() if len(values) == 1 else ", ".join(f"{m} {v}" for m, v in per.items())
    return out


def _add_fields(group, flags: dict, defaults: dict) -> None:
    for name, (text, kind, choices) in flags.items():
        default = defaults.get(name)
        default = " .. ".join(map(str, (default[0], default[-1]))) if isinstance(default, tuple) else default
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                           choices=list(choices) if choices else None,
                           nargs="+" if name == "sensitivity_ratios" else None,
                           help=f"{text} (default {default})")


def add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a model and save it",
                       description="Compress every Linear in the decoder blocks. --ratio is the fraction "
                                   "of those parameters KEPT (0.8 = the papers' '20%% compression').")
    p.add_argument("model", help="Hugging Face directory or alias (smollm2-135m)")
    p.add_argument("out", help="output directory: must not exist or be empty (see --overwrite); never the "
                                "model's own directory")
    what = p.add_argument_group("what to compress, and how")
    what.add_argument("--method", default=None, type=method_name, choices=sorted(CONFIGS),
                      help=f"one of {', '.join(sorted(CONFIGS))} (default nsvd; SVD-LLM and svd-llm name svd_llm)")
    what.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                      help="a named combination of options (docs/usage.md 'Recipes'); flags given explicitly win")
    what.add_argument("--ratio", type=float, default=None,
                      help="kept fraction of targeted parameters, in (0, 1] (default 0.8; not with --bits)")
    what.add_argument("--sequential", action="store_true", help="statistics block by block on the compressed model")
    what.add_argument("--last-blocks", type=int, default=None, help="compress only the last L blocks")
    what.add_argument("--ignore", nargs="*", default=[], help="glob patterns of modules to keep dense")
    defaults = _defaults()
    _add_fields(p.add_argument_group("allocation, objective, refinement"), CONFIG_FLAGS, defaults)
    _add_fields(p.add_argument_group("bytes: quantized factors, quantized base"), QUANT_FLAGS, defaults)
    _add_fields(p.add_argument_group("method options"), METHOD_FLAGS, defaults)
    calib = p.add_argument_group("calibration")
    calib.add_argument("--calib", default="wiki",
                       help="calibration text: wiki, ptb, code, bg or a text file; or a weighted mix of them, "
                            "e.g. wiki:0.75,notes.txt:0.25 (windows drawn at random per source, --calib-seed)")
    calib.add_argument("--calib-seed", type=int, default=0, help="seed of a mixed --calib's window draw (default 0)")
    calib.add_argument("--n-samples", type=positive_int, default=32, help="calibration windows (default 32)")
    calib.add_argument("--seqlen", type=window_length, default=512,
                       help="calibration window length (default 512; at most the model's positions)")
    calib.add_argument("--batch-size", type=positive_int, default=1,
                       help="calibration windows per block forward (same statistics: they are sums)")
    out = p.add_argument_group("output and evaluation")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing non-empty output directory (only once the new output is complete)")
    out.add_argument("--eval", default="", help="comma list of datasets to evaluate before and after, e.g. wiki,ptb")
    out.add_argument("--max-windows", type=positive_int, default=None,
                     help="evaluation windows (default: wiki 60, ptb 40)")
    out.add_argument("--eval-seqlen", type=window_length, default=512, help="evaluation window length (protocol: 512)")
    out.add_argument("--json", default=None, help="also write the report and ppl to this JSON file")
    out.add_argument("--per-module", action="store_true", help="print the per-module table")
    out.add_argument("--shard-size", type=parse_size, default="5GB",
                     help="largest output shard, e.g. 5GB, 500MB (whole blocks per shard)")
    run = p.add_argument_group("where it runs")
    run.add_argument("--device", default="cpu", help="where to compress and evaluate: cpu, cuda, cuda:1")
    run.add_argument("--offload", action="store_true",
                     help="out of core: read one decoder block at a time from the checkpoint, write "
                          "shards as blocks finish; an interrupted run resumes from OUT.partial/")
    run.add_argument("--max-memory", type=parse_size, default=None,
                     help="with --offload: refuse to start when the expected peak exceeds this (e.g. 24GiB)")
    run.add_argument("--trial-memory", type=parse_size, default="1GiB",
                     help="with --offload and --allocation sensitivity: most memory for the trials' hidden "
                          "states at a time; less means more sweeps over the blocks")
    run.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                     help="under torchrun: the torch.distributed backend (auto: nccl with --device cuda, "
                          "else gloo)")
    run.add_argument("--dist-timeout", type=float, default=1800.0,
                     help="under torchrun: seconds a rank waits for the others at a collective before "
                          "giving up (longer than one block's decomposition)")
    _add_model_options(run)
    p.set_defaults(func="cli_run:run_compress", interrupted="cli_run:compress_interrupted")


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '24GiB' -> 24 * 2**30, '1000' -> 1000 bytes."""
    t = str(text).strip().upper().replace(" ", "")
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in _UNITS or value <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a positive number with an optional "
                                         f"unit (B, KB, MB, GB, KiB, MiB, GiB)")
    return int(value * _UNITS[unit])


def _add_model_options(p) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype to load (and store the factors in); auto = the checkpoint's own")
    p.add_argument("--bos", default="auto", choices=["auto", "yes", "no"],
                   help="start every calibration/evaluation window with BOS; auto = the model's "
                        "convention (its tokenizer adds BOS by default: Gemma yes, SmolLM2/Qwen2.5 no)")


def bos_option(args) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[args.bos]


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model or compressed directory")
    p.add_argument("model", help="alias, Hugging Face directory or svdzip output directory")
    p.add_argument("--data", default="wiki,ptb", help="comma list: wiki, ptb or text files")
    p.add_argument("--max-windows", type=positive_int, default=None)
    p.add_argument("--seqlen", type=window_length, default=512)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the checksum check of an svdzip directory's tensor files (also SVDZIP_NO_VERIFY=1)")
    _add_model_options(p)
    p.set_defaults(func="cli_run:run_eval")


def make_config(args):
    base = dict(RECIPES[args.recipe]) if getattr(args, "recipe", None) else {}
    args.method = args.method or base.pop("method", "nsvd")
    base.pop("method", None)
    cls = CONFIGS[args.method]
    fields = {f for f in cls.__dataclass_fields__}
    # --method overriding the recipe's: the recipe's fields of its own method (nsvd's stage2) drop out
    base = {k: v for k, v in base.items() if k in fields}
    if args.ratio is not None and getattr(args, "bits", None) is not None:
        raise UsageError("--ratio and --bits are two budgets: give one (--bits derives the ratio)")
    kw = {**base, "ratio": 0.8 if args.ratio is None else args.ratio,
          "sequential": args.sequential or base.get("sequential", False),
          "last_blocks": args.last_blocks, "ignore": tuple(args.ignore)}
    for flag in (*CONFIG_FLAGS, *QUANT_FLAGS):
        if getattr(args, flag, None) is not None:
            kw[flag] = getattr(args, flag)
    for flag in METHOD_FLAGS:
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag not in fields:
            raise UsageError(f"--{flag.replace('_', '-')} does not apply to --method {args.method}")
        kw[flag] = value
    if kw.get("base_from"):  # the checkpoint's own format, unless given (and then checked against it)
        from .pipeline.ctbase import checkpoint_format
        try:
            bits, group = checkpoint_format(kw["base_from"])
        except (OSError, ValueError) as exc:
            raise UsageError(f"--base-from: {exc}") from None
        kw.setdefault("base_bits", bits)
        kw.setdefault("group_size", group)
        if (kw["base_bits"], kw["group_size"]) != (bits, group):
            raise UsageError(f"--base-from {kw['base_from']} holds {bits}-bit weights in groups of {group}, "
                             f"not --base-bits {kw['base_bits']} --group-size {kw['group_size']}")
    try:
        return cls(**kw)
    except ValueError as exc:  # "ratio = 0.0 must be ..." -> "--ratio: ratio = 0.0 must be ..."
        field_name = str(exc).split(" ", 1)[0]
        flag = f"--{field_name.replace('_', '-')}"
        raise UsageError(f"{flag}: {exc}" if field_name in kw and hasattr(args, field_name) else str(exc)) from None
