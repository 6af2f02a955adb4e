"""The flags of `svdzip compress` and `svdzip eval`, and the config they make (the runs: cli_run.py)."""

from __future__ import annotations

import argparse
import dataclasses

from .cli_checks import UsageError, positive_int, window_length
from .config import CONFIGS, FLAT, PARTS, RECIPES, build_config, method_name, method_option_meta, own_fields

# one help group per config part; each flag, its type, choices, default and help come from the
# part's field (config_parts.py), so the help can never disagree with the config
PART_TITLES = {"calibration": "calibration statistics", "allocation": "allocation: how the budget is spread",
               "objective": "objective", "refinement": "block-wise refinement",
               "output": "bytes: quantized factors, quantized base"}
# the options of some methods only (asvd's alpha, nsvd's stage2): their flags come from the method configs
METHOD_FLAGS = tuple(sorted({name for cls in CONFIGS.values() for name in own_fields(cls)}))


def _method_options() -> dict[str, tuple[dict, str, str]]:
    """Each method option: (its field's metadata, the methods that have it, its default per method
    ("nid plain, nsvd asvd") where they differ), from the method configs."""
    own: dict[str, dict] = {}
    for method, cls in sorted(CONFIGS.items()):
        for name in own_fields(cls):
            own.setdefault(name, {})[method] = cls.__dataclass_fields__[name].default
    out = {}
    for name, per in own.items():
        values = set(map(str, per.values()))
        shown = values.pop() if len(values) == 1 else ", ".join(f"{m} {v}" for m, v in per.items())
        kind = next(type(v) for v in (*per.values(), "") if v is not None)
        out[name] = ({"kind": kind, **{k: v for k, v in method_option_meta(name).items() if v is not None}},
                     "/".join(per), shown)
    return out


def _shown(default) -> str:
    if isinstance(default, tuple):
        return " .. ".join(map(str, (default[0], default[-1])))
    return str(default)


def _add_part(group, part_cls) -> None:
    for f in dataclasses.fields(part_cls):
        meta = f.metadata
        if not meta.get("cli"):
            continue
        flag = meta.get("flag") or f.name
        default = f.default if f.default is not dataclasses.MISSING else None
        text = meta["help"] + ("" if default is None else f" (default {_shown(default)})")
        if isinstance(default, bool):
            group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None,
                               action=argparse.BooleanOptionalAction, help=text)
            continue
        group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=meta.get("kind") or type(default),
                           default=None, choices=list(meta["choices"]) if meta.get("choices") else None,
                           nargs="+" if meta.get("many") else None, help=text)


def _add_method_flags(group) -> None:
    for name, (meta, methods, shown) in _method_options().items():
        text = f"{methods}: {meta['help']}"
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=meta["kind"], default=None,
                           choices=list(meta["choices"]) if meta.get("choices") else None,
                           help=text if shown == "None" else f"{text} (default {shown})")


def add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a model and save it",
                       description="Compress every Linear in the decoder blocks. --ratio is the fraction "
                                   "of those parameters KEPT (0.8 = the papers' '20% compression').")
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
    what.add_argument("--ignore", nargs="*", default=[], help="glob patterns of modules to keep dense")
    _add_method_flags(p.add_argument_group("method options"))
    for name, part_cls in PARTS.items():
        _add_part(p.add_argument_group(PART_TITLES[name]), part_cls)
    calib = p.add_argument_group("calibration text")
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
    """The config of the flags: recipe, then the flags given (build_config: the one merge)."""
    if args.ratio is not None and getattr(args, "bits", None) is not None:
        raise UsageError("--ratio and --bits are two budgets: give one (--bits derives the ratio)")
    options = {flag: getattr(args, flag) for flag in (*FLAT, *METHOD_FLAGS) if getattr(args, flag, None) is not None}
    if args.ratio is not None:
        options["ratio"] = args.ratio
    if args.ignore:
        options["ignore"] = tuple(args.ignore)
    method = args.method or (RECIPES[args.recipe]["method"] if args.recipe else "nsvd")
    foreign = [f for f in METHOD_FLAGS if f in options and f not in own_fields(CONFIGS[method])]
    if foreign:
        raise UsageError(f"--{foreign[0].replace('_', '-')} does not apply to --method {method}")
    if options.get("base_from"):  # the checkpoint's own format, unless given (and then checked against it)
        options.update(_base_format(options))
    try:
        return build_config(method=method, recipe=args.recipe, **options)
    except ValueError as exc:  # "ratio = 0.0 must be ..." -> "--ratio: ratio = 0.0 must be ..."
        name = str(exc).split(" ", 1)[0]
        raise UsageError(f"--{name.replace('_', '-')}: {exc}" if name in options else str(exc)) from None


def _base_format(options: dict) -> dict:
    """--base-from's bits and group size, checked against --base-bits / --group-size if given."""
    from .pipeline.ctbase import checkpoint_format
    try:
        bits, group = checkpoint_format(options["base_from"])
    except (OSError, ValueError) as exc:
        raise UsageError(f"--base-from: {exc}") from None
    given = (options.get("base_bits", bits), options.get("group_size", group))
    if given != (bits, group):
        raise UsageError(f"--base-from {options['base_from']} holds {bits}-bit weights in groups of {group}, "
                         f"not --base-bits {given[0]} --group-size {given[1]}")
    return {"base_bits": bits, "group_size": group}
