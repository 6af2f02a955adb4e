"""What the CLI checks before the first forward pass: each problem is one line naming the flag,
the value and the limit, found in seconds instead of after the model has loaded (or, for a
too-long window, after minutes in attention)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

BUILTIN_TEXTS = ("wiki", "ptb", "code", "bg")


class UsageError(ValueError):
    """A flag's value the run cannot work with."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def window_length(text: str) -> int:
    """argparse type: a window length >= 2 (one token predicted from another)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} must be at least 2 tokens")
    return value


def datasets(spec: str, flag: str) -> list[str]:
    """A comma list of evaluation texts: built-in names or existing text files."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in BUILTIN_TEXTS and not Path(name).is_file():
            raise UsageError(f"{flag} {spec}: {name!r} is neither one of {', '.join(BUILTIN_TEXTS)} nor a text file")
    return names


def calibration_sources(spec: str) -> None:
    """--calib: its syntax and that every source exists (the windows are counted later)."""
    from .data import parse_mix

    try:
        sources = parse_mix(spec)
    except ValueError as exc:
        raise UsageError(f"--calib {spec}: {exc}") from None
    for name, _ in sources:
        if name not in BUILTIN_TEXTS and not Path(name).is_file():
            raise UsageError(f"--calib {spec}: {name!r} is neither one of {', '.join(BUILTIN_TEXTS)} nor a text file")


def _model_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path / 'config.json'} cannot be read: {exc}") from None
    return cfg if isinstance(cfg, dict) else {}


def position_limit(path: Path) -> int | None:
    """The model's largest position (config.json's max_position_embeddings, or its text config's)."""
    cfg = _model_config(path)
    for c in (cfg, cfg.get("text_config") or {}):
        limit = c.get("max_position_embeddings")
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def seqlen(value: int, flag: str, path: Path) -> None:
    limit = position_limit(path)
    if limit is not None and value > limit:
        raise UsageError(f"{flag} {value}: {path.name} has {limit:,} positions (max_position_embeddings); "
                         f"use at most {limit}")


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def disk_space(out: str, model_path: Path, ratio: float, dtype: str | None) -> str | None:
    """Refuses when the output cannot fit (it is at least `ratio` of the dense tensors); returns a
    warning when it might not (at most the dense tensors), else None."""
    dense = checkpoint_bytes(model_path)
    cfg = _model_config(model_path)
    saved_fp32 = (cfg.get("dtype") or cfg.get("torch_dtype") or "float32") == "float32"
    if dtype in ("bfloat16", "float16") and saved_fp32:
        dense //= 2
    elif dtype == "float32" and not saved_fp32:
        dense *= 2
    parent = Path(out).expanduser().resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    least = int(dense * ratio)
    if free < least:
        raise UsageError(f"output {out}: {free / 2**30:.2f} GiB free on its disk, the compressed model needs "
                         f"at least {least / 2**30:.2f} GiB (ratio {ratio} of {dense / 2**30:.2f} GiB); free space "
                         f"or choose another disk")
    if free < dense:
        return (f"output {out}: {free / 2**30:.2f} GiB free; the compressed model needs between "
                f"{least / 2**30:.2f} and {dense / 2**30:.2f} GiB")
    return None


def device(name: str):
    """A torch device that exists here."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: torch sees no CUDA device (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise UsageError(f"--device {name}: svdzip runs on cpu or cuda")
    return dev
