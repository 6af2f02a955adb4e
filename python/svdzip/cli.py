"""svdzip command line: compress, eval, verify, lm-eval, plot, bench, env, models, demo.

A user error (a bad flag, path or file) is one line naming it and exits 1; Ctrl-C says what
was interrupted and what was kept, and exits 130; --debug (or SVDZIP_DEBUG=1) shows tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings


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


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line naming it (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="svdzip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from .cli_export import add_export
    from .cli_plot import add_plot

    add_compress(sub)
    add_eval(sub)
    add_lmeval(sub)
    add_plot(sub)
    add_bench(sub)
    add_export(sub)
    v = sub.add_parser("verify", help="check an svdzip directory's tensor files against their saved checksums",
                       description="Reads every *.safetensors file of DIR and compares its SHA-256 with the one "
                                   "svdzip_config.json recorded when it was saved; loads no model.")
    v.add_argument("dir", help="svdzip output directory")
    v.set_defaults(func=_cmd_verify)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback of an error (also SVDZIP_DEBUG=1)")
    return p


def _cmd_verify(args: argparse.Namespace) -> int:
    from .meta import read_meta, verify_dir

    read_meta(args.dir)  # an svdzip directory, its rank map readable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said below, once
        files = verify_dir(args.dir, verify=True)
    print(f"{args.dir}: " + (f"{len(files)} tensor file(s) match their checksums ({', '.join(files)})" if files
                             else "no checksums recorded (saved by an older svdzip); nothing to check"))
    return 0


def _user_errors() -> tuple:
    """Exceptions that are the user's input, not svdzip's bug: one line, no traceback."""
    import torch

    kinds = [ValueError, OSError, MemoryError, FloatingPointError, torch.OutOfMemoryError]
    try:
        from safetensors import SafetensorError
        kinds.append(SafetensorError)
    except ImportError:
        pass
    try:
        from .pipeline.group import RankFailed
        kinds.append(RankFailed)
    except ImportError:
        pass
    return tuple(kinds)


def _resolve(handler):
    """A command's handler: a function, or "module:function" of this package, imported only when
    the command runs (so that --help never imports torch)."""
    if not isinstance(handler, str):
        return handler
    import importlib

    module, _, name = handler.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SVDZIP_DEBUG", "") not in ("", "0")
    if not debug:  # a warning is one line too: what, not where in svdzip's code
        warnings.formatwarning = lambda message, category, *rest: f"svdzip {args.command}: warning: {message}\n"
    where = ["starting"]
    args.step = lambda what: where.__setitem__(0, what)
    try:
        return _resolve(args.func)(args)
    except KeyboardInterrupt:
        if debug:
            raise
        left = _resolve(args.interrupted)(args) if hasattr(args, "interrupted") else ""
        print(f"svdzip {args.command}: interrupted while {where[0]}" + (f"; {left}" if left else ""),
              file=sys.stderr)
        return 130
    except Exception as exc:
        if debug or not isinstance(exc, _user_errors()):
            raise
        print(f"svdzip {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
