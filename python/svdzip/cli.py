"""svdzip command line: compress, eval, plot, bench, env, demo."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_env(args: argparse.Namespace) -> int:
    from . import env

    r = env.report()
    print(json.dumps(r, indent=2) if args.json else env.format_report(r))
    return 0 if all(e < 1e-8 for e in r["self_check_max_error"].values()) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main(seed=args.seed)


def _cmd_models(args: argparse.Namespace) -> int:
    from . import models

    rows = models.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "cached" if r["cached"] else "installed" if r["installed"] else "not installed"
        print(f"{r['alias']:20s} {state:14s} {r['model']}")
        if not r["installed"]:
            print(f"{'':20s} install: {r['install']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svdzip", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("env", help="versions, build flags, loaded kernels and a self-check")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=_cmd_env)
    d = sub.add_parser("demo", help="compress one synthetic layer with plain SVD vs whitened SVD")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    m = sub.add_parser("models", help="model aliases: installed or not, and how to install them")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)
    from .cli_compress import add_compress, add_eval
    from .cli_lmeval import add_lmeval

    from .cli_bench import add_bench
    from .cli_plot import add_plot

    add_compress(sub)
    add_eval(sub)
    add_lmeval(sub)
    add_plot(sub)
    add_bench(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
