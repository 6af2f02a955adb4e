"""What `svdzip compress` and `svdzip eval` do once their flags are parsed: check everything that
can be checked (cli_checks.py) before the model loads, then load, compress, save, evaluate,
printing each result as soon as it exists."""

from __future__ import annotations

import contextlib
import io as io_
import json
import time
import warnings
from pathlib import Path

from . import cli_checks as checks
from .cli_compress import bos_option, make_config


def _out_of_the_way(args, path: Path) -> None:
    """The output may be written (pipeline/outdir.py) and fits on its disk."""
    from .pipeline.outdir import check_output

    check_output(args.out, [path], args.overwrite)
    note = checks.disk_space(args.out, path, 1.0 if args.ratio is None else args.ratio,
                             None if args.dtype == "auto" else args.dtype)
    if note:
        warnings.warn(note, stacklevel=2)


def preflight(args, step) -> tuple:
    """Everything about the flags that holds before the weights load; returns (config, model directory)."""
    from . import models

    step("checking the arguments")
    cfg = make_config(args)
    checks.device(args.device)
    checks.calibration_sources(args.calib)
    args.eval_sets = checks.datasets(args.eval, "--eval")
    path = models.resolve(args.model)
    checks.seqlen(args.seqlen, "--seqlen", path)
    if args.eval_sets:
        checks.seqlen(args.eval_seqlen, "--eval-seqlen", path)
    _out_of_the_way(args, path)
    return cfg, path


def run_compress(args) -> int:
    """Under torchrun every rank runs this; rank 0 alone prints, evaluates and saves."""
    import torch

    from .pipeline.group import session

    step = args.step
    torch.manual_seed(0)
    cfg, path = preflight(args, step)
    with session(args.backend, args.dist_timeout, checks.device(args.device)) as (group, device):
        quiet = contextlib.redirect_stdout(io_.StringIO()) if group.rank else contextlib.nullcontext()
        with quiet:
            return (_run_offloaded if args.offload else _run_in_memory)(args, cfg, path, device, group)


def _tokenizer_and_calibration(args, path: Path, step):
    from transformers import AutoTokenizer

    from . import data

    step("reading the calibration text")
    tok = AutoTokenizer.from_pretrained(path)
    bos = data.resolve_bos(tok, bos_option(args))
    try:
        calib, mix = data.calibration_mix(tok, args.calib, args.n_samples, args.seqlen, bos=bos,
                                          seed=args.calib_seed)
    except ValueError as exc:
        raise checks.UsageError(f"--n-samples {args.n_samples} --seqlen {args.seqlen} --calib {args.calib}: "
                                f"{exc}") from None
    if len(mix) > 1:
        print("calibration mix: " + ", ".join(f"{m['source']} {m['windows']} windows ({m['weight']:.0%})"
                                              for m in mix))
    return tok, bos, calib, {"source": args.calib, "bos": bos, "mix": mix, "seed": args.calib_seed}


def _run_in_memory(args, cfg, path, device, group) -> int:
    from . import api, eval as ev, io, models
    from .dtypes import model_dtype

    step, t0 = args.step, time.perf_counter()
    tok, bos, calib, calib_info = _tokenizer_and_calibration(args, path, step)
    step("loading the model")
    model, _ = models.load(args.model, dtype=args.dtype)
    model.to(device)
    sets = args.eval_sets if group.rank == 0 else []
    result = {"model": args.model, "method": cfg.method, "ratio": cfg.ratio, "dtype": model_dtype(model)}
    print(f"model {args.model}: {result['dtype']}, windows {'start with BOS' if bos else 'without BOS'} "
          f"({'model default' if args.bos == 'auto' else '--bos ' + args.bos})")
    if sets:
        step("evaluating the dense model")
        result["eval_protocol"] = ev.protocol(tok, args.eval_seqlen, args.max_windows, bos_option(args))
        result["dense_ppl"] = _ppl(model, tok, sets, args, bos, "dense ppl")
    step("compressing")
    report = api.compress(model, cfg, calib, calibration_info=calib_info, batch_size=args.batch_size)
    print(report.summary(per_module=args.per_module))
    out = args.out
    step(f"saving {args.out}")
    with group.agree(f"saving {args.out}"):
        if group.rank == 0:
            out = io.save_compressed(model, args.out, tokenizer=tok, report=report, shard_size=args.shard_size,
                                     overwrite=args.overwrite)
    result["report"] = report.to_dict()
    result["ratio"] = report.config["ratio"]  # with --bits: the ratio derived from the byte budget
    if sets:
        step(f"evaluating the compressed model (saved in {out})")
        result["compressed_ppl"] = _ppl(model, tok, sets, args, bos, _label(cfg, report))
    return _finish(args, result, out, t0, group)


def _ppl(model, tok, sets, args, bos, label: str) -> dict:
    """Each text's perplexity, printed as soon as it is known."""
    from . import eval as ev

    res = {}
    for name in sets:
        res.update(ev.evaluate(model, tok, [name], args.eval_seqlen, args.max_windows, bos=bos))
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
    return res


def _finish(args, result: dict, out, t0: float, group) -> int:
    result.update(seconds=time.perf_counter() - t0, saved_to=str(out))
    print(f"saved to {out} ({result['seconds']:.0f} s in all)")
    if args.json and group.rank == 0:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


def _run_offloaded(args, cfg, path, device, group) -> int:
    """--offload: the dense model is never loaded; --eval scores only the compressed output."""
    from . import eval as ev, io, models
    from .offload import compress_checkpoint

    step, t0 = args.step, time.perf_counter()
    tok, bos, calib, calib_info = _tokenizer_and_calibration(args, path, step)
    step("compressing out of core")
    report = compress_checkpoint(path, args.out, cfg, calib, device=device,
                                 dtype=models.parse_dtype(args.dtype), batch_size=args.batch_size,
                                 shard_size=args.shard_size, max_memory=args.max_memory, tokenizer=tok,
                                 trial_memory=args.trial_memory, calibration_info=calib_info,
                                 overwrite=args.overwrite)
    print(report.summary(per_module=args.per_module))
    result = {"model": args.model, "method": cfg.method, "ratio": report.config["ratio"], "dtype": report.dtype,
              "offload": True, "report": report.to_dict()}
    sets = args.eval_sets if group.rank == 0 else []
    if sets:
        step(f"evaluating the compressed model (saved in {args.out})")
        model = io.load_compressed(args.out, device=device)
        result["eval_protocol"] = ev.protocol(tok, args.eval_seqlen, args.max_windows, bos_option(args))
        result["compressed_ppl"] = _ppl(model, tok, sets, args, bos, _label(cfg, report))
    return _finish(args, result, args.out, t0, group)


def _label(cfg, report) -> str:
    bits = report.bits_per_weight()
    return (f"compressed ppl ({cfg.method}, ratio {report.config['ratio']:.4g} kept"
            + (f", {bits:.3f} bits per weight)" if bits is not None else ")"))


def compress_interrupted(args) -> str:
    """What an interrupted compress leaves behind, for the one line printed on Ctrl-C."""
    partial = Path(f"{args.out}.partial")
    if getattr(args, "offload", False) and partial.is_dir():  # (a run stopped before .resume/ exists reruns from the start)
        return f"the finished blocks are kept in {partial}/: rerun the same command to resume"
    return f"nothing was written to {args.out}"


def run_eval(args) -> int:
    from . import eval as ev, models
    from .dtypes import model_dtype

    step = args.step
    step("checking the arguments")
    device = checks.device(args.device)
    sets = checks.datasets(args.data, "--data")
    if (Path(args.model) / "config.json").is_file() or args.model in models.ALIASES:
        checks.seqlen(args.seqlen, "--seqlen", models.resolve(args.model))
    step(f"loading {args.model}")
    if args.no_verify:
        import os

        os.environ["SVDZIP_NO_VERIFY"] = "1"
    model, tok = models.load(args.model, dtype=args.dtype)
    model.to(device)
    proto = ev.protocol(tok, args.seqlen, args.max_windows, bos_option(args))
    if not args.json:
        print(f"{args.model}: {model_dtype(model)}, windows {'with' if proto['bos'] else 'without'} BOS "
              f"({proto['bos_source']})", flush=True)
    res = {}
    for name in sets:
        step(f"evaluating {name}")
        res.update(ev.evaluate(model, tok, [name], args.seqlen, args.max_windows, bos=bos_option(args)))
        if not args.json:
            print(f"{name}: ppl {res[name]:.3f}", flush=True)
    if args.json:
        print(json.dumps({"ppl": res, "protocol": proto, "dtype": model_dtype(model)}))
    return 0
