"""Save / load compressed models: safetensors weights, the Hugging Face config (with the rank
map in its quantization_config), svdzip_config.json (format version, method config, report,
checksums: meta.py) and the tokenizer. No pickle, no remote code; saves are atomic (built in a
staging directory beside the output, then renamed) and never replace anything unasked
(pipeline/outdir.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from .dtypes import all_finite, dtype_name, model_dtype
from .hf import rank_map, check_checkpoint, input_dirs, mark_compressed, swap_in_lowrank, write_hf_config
from .meta import CONFIG_NAME, read_meta, verify_dir, write_meta
from .pipeline.checkpoint import Checkpoint
from .pipeline.layout import block_tensors, resident_tensors
from .pipeline.outdir import check_output, replace_dir, staging_dir
from .pipeline.shards import DEFAULT_SHARD_SIZE, Plan, ShardWriter, group_entries
from .pipeline.source import block_prefixes, empty_model, materialize
from .pipeline.walk import decoder_layers


def save_compressed(model: nn.Module, out_dir, tokenizer=None, report=None,
                    shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False) -> Path:
    """Write the compressed model to out_dir: one model.safetensors, or shards of at most
    `shard_size` bytes (whole blocks) with an index, then config.json (the rank map),
    svdzip_config.json (with each tensor file's checksum). Built beside out_dir and renamed
    into place; an existing non-empty out_dir is replaced only with overwrite=True, and the
    model's own input directory never (pipeline/outdir.py)."""
    out = check_output(out_dir, input_dirs(model), overwrite, flag="overwrite=True")
    modules = rank_map(model)
    if not modules:
        raise ValueError("model has no LowRankLinear modules: compress it first (svdzip.compress)")
    for name, p in model.named_parameters():
        if not all_finite(p):
            raise FloatingPointError(f"refusing to save: parameter {name} has non-finite values")
    layers = decoder_layers(model)
    prefixes = block_prefixes(model, layers)
    resident = resident_tensors(model, prefixes)
    groups = [resident] + [block_tensors(layer, p) for layer, p in zip(layers, prefixes)]
    tmp = staging_dir(out)
    try:
        writer = ShardWriter(tmp, Plan([group_entries(g) for g in groups], shard_size))
        for i, g in enumerate(groups):
            writer.write(i, g)
        writer.write_index()
        write_hf_config(model.config, tmp, modules)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_meta(tmp, type(model).__name__, model_dtype(model), report)
        replace_dir(tmp, out, overwrite)
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


def load_compressed(path, dtype: torch.dtype | None = None, device="cpu", verify: bool | None = None) -> nn.Module:
    """Build the architecture on the meta device, put LowRankLinear where the rank map says,
    and read every tensor straight into place on `device` (never allocating the dense model):
    every tensor present, shaped right, finite. dtype None keeps the dtype it was saved in.
    The tensor files are checked against their saved checksums first (verify=False, or
    SVDZIP_NO_VERIFY=1, skips that)."""
    from transformers import AutoConfig

    path = Path(path)
    meta = read_meta(path)
    verify_dir(path, verify)
    config = AutoConfig.from_pretrained(path)
    dtype = dtype or _saved_dtype(meta, config, path)
    model = empty_model(path, dtype, config)
    swap_in_lowrank(model, meta["modules"], path / "config.json", dtype)
    ckpt = Checkpoint(path)
    check_checkpoint(model, ckpt, path)
    materialize(model, "", ckpt, torch.device(device), dtype)
    model.eval()
    mark_compressed(model)  # model.save_pretrained writes an svdzip directory too
    return model
