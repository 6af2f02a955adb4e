"""A quantized base brought by the user: llm-compressor's compressed-tensors checkpoint
(format "pack-quantized", symmetric integer weights), read one module at a time as a QuantMatrix.

compressed-tensors packs each row's codes densely into int32 words (code i at bit i·b, codes
shifted by 2^(b-1) to unsigned), which on a little-endian machine is byte for byte svdzip's
packing (nn/packing.py), so the codes are taken as they are. W = (code - 2^(b-1))·s becomes
svdzip's code·s + offset with offset = -2^(b-1)·s. The scales are stored in fp16 as all of
svdzip's are: a scale saved in fp32 or bf16 is rounded to fp16 (relative change <= 2^-11,
the imported weight moves by at most that fraction of one quantization step).

Supported: num_bits 2, 3, 4 with strategy "group" (group_size one of config.GROUP_SIZES),
symmetric, no activation reordering (g_idx). Anything else is refused
naming the directory and the field.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import torch

from ..nn import QuantMatrix, packing
from .checkpoint import Checkpoint


@lru_cache(maxsize=4)
def _open(directory: str) -> tuple[Checkpoint, dict]:
    path = Path(directory)
    try:
        q = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path / 'config.json'}: cannot read the quantization_config ({exc})") from exc
    if q.get("quant_method") != "compressed-tensors":
        raise ValueError(f"{path}: quantization_config.quant_method is {q.get('quant_method')!r}, not "
                         f"'compressed-tensors' (an llm-compressor checkpoint saved with save_compressed=True)")
    if q.get("format") != "pack-quantized":
        raise ValueError(f"{path}: compressed-tensors format {q.get('format')!r} is not supported (only pack-quantized)")
    groups = q.get("config_groups") or {}
    if len(groups) != 1:
        raise ValueError(f"{path}: {len(groups)} config_groups; svdzip reads checkpoints with exactly one")
    return Checkpoint(path), next(iter(groups.values()))["weights"]


def checkpoint_format(directory) -> tuple[int, int]:
    """(bits, group size) of a compressed-tensors checkpoint."""
    args = _check_args(directory)
    return args["num_bits"], args["group_size"]


def _check_args(directory) -> dict:
    _, w = _open(str(directory))
    bits, strategy = w.get("num_bits"), w.get("strategy")
    where = f"{directory}: weights"
    if w.get("type") != "int" or not w.get("symmetric"):
        raise ValueError(f"{where}: type {w.get('type')!r} symmetric {w.get('symmetric')!r}; svdzip reads symmetric int")
    if w.get("actorder") not in (None, "static"):
        raise ValueError(f"{where}: actorder {w.get('actorder')!r} reorders the groups (g_idx); not supported")
    if bits not in (2, 3, 4) or strategy != "group":
        raise ValueError(f"{where}: num_bits {bits!r} with strategy {strategy!r} is not supported "
                         f"(2, 3 or 4 bits in groups)")
    return w


def read_base(directory, name: str, shape: tuple[int, int], bits: int, group_size: int) -> QuantMatrix:
    """Module `name`'s quantized weight from the checkpoint, as a QuantMatrix; it must be the
    model's shape and the config's bits and group size."""
    if sys.byteorder != "little":
        raise RuntimeError("reading compressed-tensors codes needs a little-endian machine")
    ckpt, _ = _open(str(directory))
    w = _check_args(directory)
    want = (w["num_bits"], w["group_size"])
    if (bits, group_size) != want:
        raise ValueError(f"{directory}: {name} is quantized to {want[0]} bits, group {want[1]}; "
                         f"the config says base_bits={bits}, group_size={group_size}")
    if name + ".weight_packed" not in ckpt:
        raise ValueError(f"{directory}: {name} is not quantized there (no {name}.weight_packed): "
                         f"leave it out of the targets (--ignore)")
    stored = tuple(int(v) for v in ckpt.read(name + ".weight_shape").tolist())
    if stored != tuple(shape):
        raise ValueError(f"{directory}: {name} has shape {stored} there but {tuple(shape)} in the model")
    rows, cols = shape
    words = ckpt.read(name + ".weight_packed")
    scale = ckpt.read(name + ".weight_scale").double()
    q = QuantMatrix(rows, cols, bits, group_size)
    width = packing.packed_cols(cols, bits)
    q.codes.copy_(words.contiguous().view(torch.uint8)[:, :width])
    s = _fp16(scale, name, directory)
    if s.shape != q.scale.shape:
        raise ValueError(f"{directory}: {name}.weight_scale has shape {tuple(s.shape)}, expected {tuple(q.scale.shape)}")
    q.scale.copy_(s)
    q.offset.copy_(s * -(1 << (bits - 1)))
    return q


def _fp16(t: torch.Tensor, name: str, directory) -> torch.Tensor:
    if not torch.isfinite(t).all() or t.abs().max() > torch.finfo(torch.float16).max:
        raise ValueError(f"{directory}: {name}.weight_scale is not finite or beyond fp16")
    return t.to(torch.float16)
