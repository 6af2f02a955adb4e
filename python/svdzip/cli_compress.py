"""The flags of `svdzip compress` and `svdzip eval`, and the config they make (the runs: cli_run.py)."""

from __future__ import annotations

import argparse

from .cli_checks import UsageError, positive_int, window_length
from .config import CONFIGS, RECIPES, method_name

METHOD_OPTIONS = {  # CLI flag -> config field, for the methods that have it
    "alpha": "alpha", "stat": "stat", "variant": "variant", "first_fraction": "first_fraction",
    "stage1": "stage1", "stage2": "stage2", "last_fraction": "last_fraction",
}


def add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a model and save it",
                       description="Compress every Linear in the decoder blocks. --ratio is the fraction "
                                   "of those parameters KEPT (0.8 = the papers' '20%% compression').")
    p.add_argument("model", help="Hugging Face directory or alias (smollm2-135m)")
    p.add_argument("out", help="output directory: must not exist or be empty (see --overwrite); never the "
                                "model's own directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output directory (only once the new output is complete)")
    p.add_argument("--method", default=None, type=method_name, choices=sorted(CONFIGS),
                   help="svd, fwsvd, asvd, svd_llm (also svd-llm, SVD-LLM), nsvd (default), nid, ressvd")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named combination of options (README 'Recipes'); flags given explicitly win")
    p.add_argument("--ratio", type=float, default=0.8, help="kept fraction of targeted parameters, in (0, 1]")
    p.add_argument("--calib", default="wiki",
                   help="calibration text: wiki, ptb, code, bg or a text file; or a weighted mix of them, "
                        "e.g. wiki:0.75,notes.txt:0.25 (windows drawn at random per source, --calib-seed)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of a mixed --calib's window draw (default 0)")
    p.add_argument("--n-samples", type=positive_int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=window_length, default=512,
                   help="calibration window length (default 512; at most the model's positions)")
    p.add_argument("--sequential", action="store_true", help="statistics block by block on the compressed model")
    p.add_argument("--last-blocks", type=int, default=None, help="compress only the last L blocks")
    p.add_argument("--ignore", nargs="*", default=[], help="glob patterns of modules to keep dense")
    p.add_argument("--allocation", choices=["uniform", "last_blocks", "sensitivity", "loss"], default=None,
                   help="per-module ratios: uniform (default), last_blocks (with --last-blocks), or "
                        "sensitivity (ASVD trials; cached in $SVDZIP_CACHE/sensitivity), or loss "
                        "(no trials: whitened spectra x Fisher importance, budget solved exactly)")
    p.add_argument("--loss-importance", choices=["probe", "block", "fisher", "relative"], default=None,
                   help="--allocation loss: weight of each module's output error (default probe: each "
                        "module truncated alone, its block's output change scored with the Fisher there; "
                        "block: relative error x the block's Fisher importance)")
    p.add_argument("--loss-windows", type=int, default=None,
                   help="--allocation loss: calibration windows of the Fisher backward (default 8)")
    p.add_argument("--loss-probe-windows", type=int, default=None,
                   help="--loss-importance probe: calibration windows each probe reruns its block on (default 2)")
    p.add_argument("--loss-probe-ratio", type=float, default=None,
                   help="--loss-importance probe: the ratio each module is truncated to in its probe (default 0.5)")
    p.add_argument("--loss-min-ratio", type=float, default=None,
                   help="--allocation loss: the lowest ratio any module gets (default 0.4; 0 = rank 1)")
    p.add_argument("--sensitivity-ratios", type=float, nargs="+", default=None,
                   help="candidate ratios of the sensitivity trials (default 0.4 .. 0.9)")
    p.add_argument("--sensitivity-windows", type=int, default=None,
                   help="calibration windows the trials are scored on (default 2)")
    p.add_argument("--sensitivity-seqlen", type=int, default=None, help="their length (default 256)")
    p.add_argument("--gram-products", choices=["fp64", "fp32"], default=None,
                   help="precision of each calibration window's Gram product (the sum is fp64 either "
                        "way); fp32 is ~2x faster on CPU. Default fp64")
    p.add_argument("--objective", choices=["plain", "compensated"], default=None,
                   help="compensated: fit each layer, fed the compressed model's inputs, to the dense "
                        "layer's outputs (needs --sequential and a whitened method)")
    p.add_argument("--compensation", type=float, default=None,
                   help="--objective compensated: strength beta in [0, 1] of the compensation (default 0.25)")
    p.add_argument("--refine-epochs", type=int, default=None,
                   help="block-wise refinement (needs --sequential): epochs of Adam on each block's "
                        "factors against the dense block's outputs (default 0 = off)")
    p.add_argument("--refine-lr", type=float, default=None, help="refinement learning rate (default 1e-4)")
    p.add_argument("--refine-weighting", choices=["channel", "none"], default=None,
                   help="refinement error: per-channel standardised (channel, default) or plain MSE (none)")
    p.add_argument("--alpha", type=float, help="asvd: exponent of the channel scaling")
    p.add_argument("--stat", choices=["mean", "max"], help="asvd: channel statistic")
    p.add_argument("--variant", choices=["I", "II"], help="nsvd/nid: Cholesky (I) or eigen (II) stage 1")
    p.add_argument("--first-fraction", type=float, help="nsvd/nid/ressvd: share of the rank in stage 1")
    p.add_argument("--stage1", help="nsvd/nid/ressvd: weighting of stage 1 (plain, whitened, whitened_eigen, asvd)")
    p.add_argument("--stage2", help="nsvd/nid/ressvd: weighting of stage 2")
    p.add_argument("--last-fraction", type=float, help="ressvd: fraction of blocks compressed (from the end)")
    p.add_argument("--eval", default="", help="comma list of datasets to evaluate before and after, e.g. wiki,ptb")
    p.add_argument("--max-windows", type=positive_int, default=None,
                   help="evaluation windows (default: wiki 60, ptb 40)")
    p.add_argument("--eval-seqlen", type=window_length, default=512, help="evaluation window length (protocol: 512)")
    p.add_argument("--json", default=None, help="also write the report and ppl to this JSON file")
    p.add_argument("--per-module", action="store_true", help="print the per-module table")
    p.add_argument("--device", default="cpu", help="where to compress and evaluate: cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="calibration windows per block forward (same statistics: they are sums)")
    p.add_argument("--offload", action="store_true",
                   help="out of core: read one decoder block at a time from the checkpoint, write "
                        "shards as blocks finish; an interrupted run resumes from OUT.partial/")
    p.add_argument("--shard-size", type=parse_size, default="5GB",
                   help="largest output shard, e.g. 5GB, 500MB (whole blocks per shard)")
    p.add_argument("--max-memory", type=parse_size, default=None,
                   help="with --offload: refuse to start when the expected peak exceeds this (e.g. 24GiB)")
    p.add_argument("--trial-memory", type=parse_size, default="1GiB",
                   help="with --offload and --allocation sensitivity: most memory for the trials' hidden "
                        "states at a time; less means more sweeps over the blocks")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                   help="under torchrun: the torch.distributed backend (auto: nccl with --device cuda, "
                        "else gloo)")
    p.add_argument("--dist-timeout", type=float, default=1800.0,
                   help="under torchrun: seconds a rank waits for the others at a collective before "
                        "giving up (longer than one block's decomposition)")
    _add_model_options(p)
    p.set_defaults(func=_run("run_compress"), interrupted=_run("compress_interrupted"))


def _run(name: str):
    """cli_run.<name>, imported when the command runs (not when --help is printed)."""
    def call(args):
        from . import cli_run

        return getattr(cli_run, name)(args)
    return call


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
    p.set_defaults(func=_run("run_eval"))


def make_config(args):
    base = dict(RECIPES[args.recipe]) if getattr(args, "recipe", None) else {}
    args.method = args.method or base.pop("method", "nsvd")
    base.pop("method", None)
    cls = CONFIGS[args.method]
    fields = {f for f in cls.__dataclass_fields__}
    # --method overriding the recipe's: the recipe's fields of its own method (nsvd's stage2) drop out
    base = {k: v for k, v in base.items() if k in fields}
    kw = {**base, "ratio": args.ratio, "sequential": args.sequential or base.get("sequential", False),
          "last_blocks": args.last_blocks, "ignore": tuple(args.ignore)}
    for flag in ("allocation", "sensitivity_ratios", "sensitivity_windows", "sensitivity_seqlen",
                 "gram_products", "objective", "loss_importance", "loss_windows", "loss_min_ratio",
                 "loss_probe_windows", "loss_probe_ratio", "compensation",
                 "refine_epochs", "refine_lr", "refine_weighting"):
        if getattr(args, flag, None) is not None:
            kw[flag] = getattr(args, flag)
    for flag, field in METHOD_OPTIONS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if field not in fields:
            raise UsageError(f"--{flag.replace('_', '-')} does not apply to --method {args.method}")
        kw[field] = value
    try:
        return cls(**kw)
    except ValueError as exc:  # "ratio = 0.0 must be ..." -> "--ratio: ratio = 0.0 must be ..."
        field_name = str(exc).split(" ", 1)[0]
        flag = f"--{field_name.replace('_', '-')}"
        raise UsageError(f"{flag}: {exc}" if field_name in kw and hasattr(args, field_name) else str(exc)) from None
