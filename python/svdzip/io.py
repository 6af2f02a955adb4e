"""Save / load compressed models: safetensors weights + svdzip_config.json (format version,
method config, per-module rank and shape) + the Hugging Face config and tokenizer.
No pickle, no remote code; saves are atomic (written to a temporary directory, then renamed)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .dtypes import dtype_name, model_dtype
from .nn import LowRankLinear

FORMAT_VERSION = 1
CONFIG_NAME = "svdzip_config.json"
WEIGHTS_NAME = "model.safetensors"


def _rank_map(model: nn.Module) -> dict[str, dict]:
    return {name: {"rank": m.rank, "in_features": m.in_features, "out_features": m.out_features,
                   "bias": m.bias is not None}
            for name, m in model.named_modules() if isinstance(m, LowRankLinear)}


def save_compressed(model: nn.Module, out_dir, tokenizer=None, report=None) -> Path:
    """Write the compressed model to out_dir (replacing it atomically if it exists)."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    modules = _rank_map(model)
    if not modules:
        raise ValueError("model has no LowRankLinear modules: compress it first (svdzip.compress)")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"refusing to save: parameter {name} has non-finite values")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {"format_version": FORMAT_VERSION, "svdzip_version": __import__("svdzip").__version__,
                "architecture": type(model).__name__, "modules": modules,
                "dtype": model_dtype(model),
                "method_config": report.config if report is not None else None,
                "report": report.to_dict() if report is not None else None}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _saved_dtype(meta: dict, config, where: Path) -> torch.dtype:
    """The dtype the model was saved in (svdzip_config.json, else config.json, else fp32)."""
    name = meta.get("dtype") or dtype_name(getattr(config, "dtype", None) or torch.float32)
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{where / CONFIG_NAME}: dtype {name!r} is not a torch floating dtype")
    return dtype


def _replace_dir(new: Path, dest: Path) -> None:
    """Swap `new` into `dest`; an existing dest is kept until the new one is in place."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_meta(path: Path) -> dict:
    f = path / CONFIG_NAME
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: {path} is not an svdzip output directory")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is corrupt: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{f}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this svdzip reads {FORMAT_VERSION})")
    modules = meta.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"{f}: 'modules' (the rank map) is missing or empty")
    for name, spec in modules.items():
        if not all(isinstance(spec.get(k), int) and spec[k] > 0 for k in ("rank", "in_features", "out_features")):
            raise ValueError(f"{f}: module {name} has an invalid spec {spec}")
    return meta


def load_compressed(path, dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild the architecture from its config, swap in LowRankLinear per the rank map,
    and load the weights strictly (every tensor present, shaped right, finite).
    dtype None keeps the dtype the model was saved in."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    meta = _read_meta(path)
    config = AutoConfig.from_pretrained(path)
    dtype = dtype or _saved_dtype(meta, config, path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    named = dict(model.named_modules())
    for name, spec in meta["modules"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = named.get(parent_name)
        if parent is None or not isinstance(getattr(parent, attr, None), nn.Linear):
            raise ValueError(f"{path / CONFIG_NAME}: module {name} is not a Linear in {type(model).__name__}")
        setattr(parent, attr, LowRankLinear(spec["in_features"], spec["out_features"], spec["rank"],
                                            spec["bias"], dtype=dtype))
    weights = path / WEIGHTS_NAME
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{weights} could not be read (corrupt or truncated?): {exc}") from exc
    if missing or unexpected:
        raise ValueError(f"{weights} does not match the rank map: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"{weights}: tensor {name} has non-finite values")
    model.eval()
    return model
