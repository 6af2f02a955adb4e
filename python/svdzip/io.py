"""Save / load compressed models: safetensors weights + svdzip_config.json (format version,
method config, per-module rank and shape) + the Hugging Face config and tokenizer.
No pickle, no remote code; saves are atomic (written to a temporary directory, then renamed)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .dtypes import all_finite, dtype_name, model_dtype
from .hf import (FORMAT_VERSION, _rank_map, check_checkpoint, check_rank_map, mark_compressed,
                 swap_in_lowrank, write_hf_config)
from .pipeline.checkpoint import Checkpoint
from .pipeline.layout import block_tensors, resident_tensors
from .pipeline.shards import DEFAULT_SHARD_SIZE, Plan, ShardWriter, group_entries, replace_dir
from .pipeline.source import block_prefixes, empty_model, materialize
from .pipeline.walk import decoder_layers

CONFIG_NAME = "svdzip_config.json"


def save_compressed(model: nn.Module, out_dir, tokenizer=None, report=None,
                    shard_size: int = DEFAULT_SHARD_SIZE) -> Path:
    """Write the compressed model to out_dir (replacing it atomically if it exists): one
    model.safetensors, or shards of at most `shard_size` bytes (whole blocks) with an index."""
    out = Path(out_dir)
    modules = _rank_map(model)
    if not modules:
        raise ValueError("model has no LowRankLinear modules: compress it first (svdzip.compress)")
    for name, p in model.named_parameters():
        if not all_finite(p):
            raise FloatingPointError(f"refusing to save: parameter {name} has non-finite values")
    layers = decoder_layers(model)
    prefixes = block_prefixes(model, layers)
    resident = resident_tensors(model, prefixes)
    groups = [resident] + [block_tensors(layer, p) for layer, p in zip(layers, prefixes)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        writer = ShardWriter(tmp, Plan([group_entries(g) for g in groups], shard_size))
        for i, g in enumerate(groups):
            writer.write(i, g)
        writer.write_index()
        write_hf_config(model.config, tmp, modules)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_meta(tmp, type(model).__name__, modules, model_dtype(model), report)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_meta(directory: Path, architecture: str, modules: dict, dtype: str, report) -> None:
    meta = {"format_version": FORMAT_VERSION, "svdzip_version": __import__("svdzip").__version__,
            "architecture": architecture, "modules": modules, "dtype": dtype,
            "method_config": report.config if report is not None else None,
            "report": report.to_dict() if report is not None else None}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))


def _saved_dtype(meta: dict, config, where: Path) -> torch.dtype:
    """The dtype the model was saved in (svdzip_config.json, else config.json, else fp32)."""
    name = meta.get("dtype") or dtype_name(getattr(config, "dtype", None) or torch.float32)
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{where / CONFIG_NAME}: dtype {name!r} is not a torch floating dtype")
    return dtype


def _read_meta(path: Path) -> dict:
    """svdzip_config.json, or (a directory written by save_pretrained) config.json's
    quantization_config."""
    f = path / CONFIG_NAME
    if not f.is_file():
        return _meta_from_hf_config(path)
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is corrupt: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{f}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this svdzip reads {FORMAT_VERSION})")
    check_rank_map(meta.get("modules"), f)
    return meta


def _meta_from_hf_config(path: Path) -> dict:
    f = path / "config.json"
    try:
        q = json.loads(f.read_text()).get("quantization_config") or {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        q = {}
    if q.get("quant_method") != "svdzip":
        raise FileNotFoundError(f"{path / CONFIG_NAME} not found and {f} has no svdzip quantization_config: "
                                f"{path} is not an svdzip output directory")
    if q.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{f}: quantization_config format_version {q.get('format_version')!r} is not supported "
                         f"(this svdzip reads {FORMAT_VERSION})")
    check_rank_map(q.get("modules"), f)
    return {"format_version": FORMAT_VERSION, "modules": q["modules"]}


def load_compressed(path, dtype: torch.dtype | None = None, device="cpu") -> nn.Module:
    """Build the architecture on the meta device, put LowRankLinear where the rank map says,
    and read every tensor straight into place on `device` (never allocating the dense model):
    every tensor present, shaped right, finite. dtype None keeps the dtype it was saved in."""
    from transformers import AutoConfig

    path = Path(path)
    meta = _read_meta(path)
    config = AutoConfig.from_pretrained(path)
    dtype = dtype or _saved_dtype(meta, config, path)
    model = empty_model(path, dtype, config)
    swap_in_lowrank(model, meta["modules"], path / CONFIG_NAME, dtype)
    ckpt = Checkpoint(path)
    check_checkpoint(model, ckpt, path)
    materialize(model, "", ckpt, torch.device(device), dtype)
    model.eval()
    mark_compressed(model)  # model.save_pretrained writes an svdzip directory too
    return model
