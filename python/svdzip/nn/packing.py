"""Bit packing of quantization codes: b-bit codes (0 <= code < 2**b) stored densely, 8 / b
codes per byte for b in {2, 4, 8} and 8 codes in 3 bytes for b = 3, so a file's size is
the bits it claims. Little-endian within each row: bit j of code i is bit (i*b + j) of the
row. Rows are packed independently (a row's last byte may be partly unused)."""

from __future__ import annotations

import torch

BITS = (2, 3, 4, 8)


def packed_cols(cols: int, bits: int) -> int:
    """Bytes per row of `cols` b-bit codes."""
    return (cols * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, cols] integer codes -> [rows, packed_cols(cols, bits)] uint8."""
    if bits not in BITS:
        raise ValueError(f"cannot pack {bits}-bit codes: bits must be one of {BITS}")
    rows, cols = codes.shape
    c = codes.to(torch.int32)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes outside [0, {(1 << bits) - 1}] cannot be packed in {bits} bits")
    if bits == 8:
        return c.to(torch.uint8).contiguous()
    planes = (c[..., None] >> torch.arange(bits, dtype=torch.int32)) & 1      # [rows, cols, bits]
    flat = planes.reshape(rows, cols * bits)
    width = packed_cols(cols, bits)
    flat = torch.nn.functional.pad(flat, (0, width * 8 - cols * bits))
    weights = 1 << torch.arange(8, dtype=torch.int32)
    return (flat.reshape(rows, width, 8) * weights).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """The inverse of pack: [rows, cols] uint8 codes."""
    if bits not in BITS:
        raise ValueError(f"cannot unpack {bits}-bit codes: bits must be one of {BITS}")
    rows, width = packed.shape
    if width != packed_cols(cols, bits):
        raise ValueError(f"packed codes have {width} bytes per row; {cols} {bits}-bit codes need "
                         f"{packed_cols(cols, bits)}")
    if bits == 8:
        return packed.to(torch.uint8)
    p = packed.to(torch.int32)
    flat = ((p[..., None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(rows, width * 8)
    planes = flat[:, : cols * bits].reshape(rows, cols, bits)
    return (planes * (1 << torch.arange(bits, dtype=torch.int32))).sum(-1).to(torch.uint8)
