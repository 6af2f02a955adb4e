"""`svdzip plot {quality,spectra,errors,ranks}`: PNG figures (needs svdzip[plot])."""

from __future__ import annotations

import glob


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw figures (PNG): quality, spectra, errors, ranks")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser("quality", help="perplexity vs ratio per method from bench_quality JSON files")
    q.add_argument("json", nargs="*", help="bench/results/quality_*.json (default: all of them)")
    q.add_argument("--dataset", default="wiki")
    q.add_argument("-o", "--out", default="quality.png")
    s = kinds.add_parser("spectra", help="singular values of W vs whitened W for chosen layers")
    s.add_argument("model", nargs="?", default="smollm2-135m")
    s.add_argument("--layers", nargs="+", default=["model.layers.0.self_attn.q_proj",
                                                   "model.layers.15.mlp.down_proj",
                                                   "model.layers.29.mlp.up_proj"])
    s.add_argument("--n-samples", type=int, default=8, help="calibration windows for the Gram")
    s.add_argument("-o", "--out", default="spectra.png")
    for name, helptext in (("errors", "per-module relative errors of a compressed model"),
                           ("ranks", "per-module ranks of a compressed model")):
        e = kinds.add_parser(name, help=helptext)
        e.add_argument("dir", help="svdzip output directory")
        e.add_argument("-o", "--out", default=f"{name}.png")
    p.set_defaults(func=run_plot)


def _spectra(args) -> dict:
    import torch

    from . import api, data, models, ops
    from .config import SVDLLMConfig

    model, tok = models.load(args.model)
    names = dict(model.named_modules())
    missing = [n for n in args.layers if n not in names]
    if missing:
        raise SystemExit(f"--layers: {missing} not in {args.model} (e.g. model.layers.0.self_attn.q_proj)")
    calib = data.calibration_batches(tok, data.text_for("wiki", "calib"), args.n_samples, 512)
    cfg = SVDLLMConfig(ratio=0.8, targets=args.layers)
    stats = api.collect_statistics(model, cfg, calib, progress=True)
    out = {}
    for n in args.layers:
        W = names[n].weight.detach().double()
        S = ops.whitening_factor(stats[n]["gram"].double()).factor
        out[n] = (torch.linalg.svdvals(W), torch.linalg.svdvals(W @ S))
    return out


def run_plot(args) -> int:
    from . import plot

    if args.kind == "quality":
        files = args.json or sorted(glob.glob("bench/results/quality_*.json"))
        if not files:
            raise SystemExit("no bench JSON given and none in bench/results/quality_*.json")
        path = plot.plot_quality(files, args.out, args.dataset)
    elif args.kind == "spectra":
        path = plot.plot_spectra(_spectra(args), args.out)
    elif args.kind == "errors":
        path = plot.plot_module_errors(args.dir, args.out)
    else:
        path = plot.plot_ranks(args.dir, args.out)
    print(f"wrote {path}")
    return 0
