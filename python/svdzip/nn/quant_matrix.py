"""QuantMatrix: an N x K weight stored in b bits, applied as x -> x·Wᵀ by torch's integer
weight-only kernels.

Formats (what safetensors holds; `packing.py` for the bit layout):
- 8 bits: symmetric per row. `codes` int8 [N, K], `scale` fp16 [N]; W = codes · scale.
- 2, 3, 4 bits: asymmetric in groups of `group_size` along K (the last group may be shorter).
  `codes` uint8 [N, packed bytes], `scale` and `offset` fp16 [N, groups]; W = code · scale + offset.
Scales are fp16 so that a group costs 32 bits beside its codes (0.25 bit per weight at 128).

Kernels (CPU): 8 bits `torch._weight_int8pack_mm`, 2-4 bits `torch._weight_int4pack_mm_for_cpu`
(its int4 container holds 2- and 3-bit codes too), both fed bfloat16 activations: measured here
(2 threads, 1536x576, weights out of cache) fp32 F.linear 127 µs, int8 kernel 37 µs with bf16
activations but 341 µs with fp32 ones, int4 28 µs (bf16). The int4 kernel wants K a multiple of the
group (32..256) and N of 16: its copy of the weight is padded (zero columns meet zero-padded
activations; extra rows are cut from the output), built on first use from the stored codes and
rebuilt if they change. Other devices run the dequantised reference (F.linear), not a kernel.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GROUP_SIZES as KERNEL_GROUPS
from . import packing

_FP16_MAX = float(torch.finfo(torch.float16).max)


def group_count(cols: int, group_size: int) -> int:
    return -(-cols // group_size)


def stored_bits(rows: int, cols: int, bits: int, group_size: int) -> int:
    """Bits a QuantMatrix of this shape stores (codes and fp16 scales / offsets)."""
    if bits == 8:
        return rows * cols * 8 + rows * 16
    return rows * packing.packed_cols(cols, bits) * 8 + rows * group_count(cols, group_size) * 32


def check_format(bits, group_size, what: str = "quantization") -> None:
    if isinstance(bits, bool) or bits not in packing.BITS:
        raise ValueError(f"{what}: bits = {bits!r} must be one of {packing.BITS}")
    if bits < 8 and (isinstance(group_size, bool) or group_size not in KERNEL_GROUPS):
        raise ValueError(f"{what}: group_size = {group_size!r} must be one of {KERNEL_GROUPS} "
                         f"(the groups torch's int4 kernel takes)")


class QuantMatrix(nn.Module):
    def __init__(self, rows: int, cols: int, bits: int, group_size: int = 128, device=None) -> None:
        super().__init__()
        check_format(bits, group_size)
        self.rows, self.cols, self.bits, self.group_size = rows, cols, bits, group_size
        if bits == 8:
            self.register_buffer("codes", torch.zeros(rows, cols, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.ones(rows, dtype=torch.float16, device=device))
            self.offset = None
        else:
            groups = group_count(cols, group_size)
            self.register_buffer("codes", torch.zeros(rows, packing.packed_cols(cols, bits), dtype=torch.uint8,
                                                      device=device))
            self.register_buffer("scale", torch.ones(rows, groups, dtype=torch.float16, device=device))
            self.register_buffer("offset", torch.zeros(rows, groups, dtype=torch.float16, device=device))
        self._kernel = None  # (key, tensors) of the kernel's own layout, built on first use

    @classmethod
    def from_float(cls, W: torch.Tensor, bits: int, group_size: int = 128, name: str = "weight") -> "QuantMatrix":
        """Round-to-nearest of W (per row for 8 bits, per group of columns below). Raises naming
        `name` for a non-finite W or a scale beyond fp16."""
        if W.dim() != 2:
            raise ValueError(f"{name}: cannot quantize a tensor of shape {tuple(W.shape)} (need a matrix)")
        if not torch.isfinite(W).all():
            raise FloatingPointError(f"{name}: cannot quantize a weight with non-finite values")
        q = cls(*W.shape, bits, group_size, device=W.device)
        Wd = W.detach().double()
        if bits == 8:
            scale = _fp16(Wd.abs().amax(1) / 127, name)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q.codes.copy_((Wd / scale.double()[:, None]).round().clamp(-127, 127).to(torch.int8))
            q.scale.copy_(scale)
            return q
        groups = group_count(q.cols, group_size)
        pad = groups * group_size - q.cols
        lo = F.pad(Wd, (0, pad), value=float("inf")).view(q.rows, groups, group_size).amin(-1)
        hi = F.pad(Wd, (0, pad), value=float("-inf")).view(q.rows, groups, group_size).amax(-1)
        scale, offset = scale_and_offset(lo, hi, bits, name)
        expand = lambda t: t.double().repeat_interleave(group_size, 1)[:, : q.cols]  # noqa: E731
        codes = ((Wd - expand(offset)) / expand(scale)).round().clamp(0, (1 << bits) - 1)
        q.codes.copy_(packing.pack(codes, bits))
        q.scale.copy_(scale)
        q.offset.copy_(offset)
        return q

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """W as the codes say, [rows, cols] (the reference the kernels are tested against)."""
        if self.bits == 8:
            return self.codes.to(dtype) * self.scale.to(dtype)[:, None]
        codes = packing.unpack(self.codes, self.bits, self.cols).to(dtype)
        expand = lambda t: t.to(dtype).repeat_interleave(self.group_size, 1)[:, : self.cols]  # noqa: E731
        return codes * expand(self.scale) + expand(self.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_kernel(x):
            return F.linear(x, self.dequantize(x.dtype))
        mm, cols = self.kernel()
        flat = x.reshape(-1, self.cols).to(torch.bfloat16)
        if cols != self.cols:
            flat = F.pad(flat, (0, cols - self.cols))
        return mm(flat)[:, : self.rows].to(x.dtype).reshape(*x.shape[:-1], self.rows)

    def runs_kernel(self, x: torch.Tensor) -> bool:
        """The integer kernel serves CPU inference; autograd, other devices and `reference_math()`
        get the reference (the dequantised weight in the activations' dtype)."""
        return x.device.type == "cpu" and not _REFERENCE[0] and not (torch.is_grad_enabled() and x.requires_grad)

    def kernel(self):
        """(mm, cols): mm maps bf16 [M, cols] (the input zero-padded to what the kernel reads) to
        bf16 [M, rows padded to 16], whose padded outputs are exactly 0 (they can be the next
        kernel's zero padding). Built on first use, rebuilt when the stored tensors change."""
        b = self._buffers
        offset = b.get("offset")
        key = (id(b["codes"]), b["codes"]._version, id(b["scale"]), b["scale"]._version,
               None if offset is None else (id(offset), offset._version))
        if self._kernel is None or self._kernel[0] != key:
            self._kernel = (key, self._build_kernel())
        return self._kernel[1]

    def _build_kernel(self):
        rows = -(-self.rows // 16) * 16
        if self.bits == 8:  # the int8 kernel reads K in steps of 16 (else wrong results or a crash)
            cols = -(-self.cols // 16) * 16
            codes = F.pad(self.codes, (0, cols - self.cols, 0, rows - self.rows)) \
                if (rows, cols) != (self.rows, self.cols) else self.codes
            if codes.data_ptr() % 64:  # tensors read from a file can sit anywhere: the kernel crashed on those
                codes = codes.clone()
            scales = F.pad(self.scale.float(), (0, rows - self.rows), value=1.0).to(torch.bfloat16)
            return (lambda a: torch._weight_int8pack_mm(a, codes, scales)), cols
        g = self.group_size
        cols = group_count(self.cols, g) * g
        # the kernel computes (code - 8) · scale + zero: codes below 4 bits are centred on 8 so that
        # zero is the group's middle, not its bottom + 8 scales (bf16 would round that coarsely)
        half = 1 << (self.bits - 1)
        codes = packing.unpack(self.codes, self.bits, self.cols).to(torch.int32) + (8 - half)
        codes = F.pad(codes, (0, cols - self.cols, 0, rows - self.rows), value=8)
        packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
        scale = F.pad(self.scale.float(), (0, 0, 0, rows - self.rows), value=1.0)
        zero = F.pad(self.offset.float() + half * self.scale.float(), (0, 0, 0, rows - self.rows))  # padded rows: 0
        scales_zeros = torch.stack([scale.t(), zero.t()], -1).to(torch.bfloat16).contiguous()
        return (lambda a: torch._weight_int4pack_mm_for_cpu(a, packed, g, scales_zeros)), cols

    def extra_repr(self) -> str:
        return f"rows={self.rows}, cols={self.cols}, bits={self.bits}, group_size={self.group_size}"


def scale_and_offset(lo: torch.Tensor, hi: torch.Tensor, bits: int, name: str):
    """fp16 (scale, offset) of groups spanning [lo, hi] in b bits (min-max). A constant group
    (codes all 0) still needs a scale: one small beside its value, so that the kernel's bf16 zero
    (offset + 2^(b-1)·scale) keeps the offset's precision; 1 for a group of zeros."""
    offset = _fp16(lo, name)
    scale = _fp16((hi - offset.double()) / ((1 << bits) - 1), name)
    small = (offset.double().abs() / 256).to(torch.float16)
    return torch.where(scale > 0, scale, torch.where(small > 0, small, torch.ones_like(small))), offset


_REFERENCE = [False]


@contextlib.contextmanager
def reference_math():
    """Inside, quantized layers compute with their dequantised weights in the activations' dtype
    instead of the bf16-activation kernels: the quantized model's own quality, apart from the
    kernels' rounding (bench_bytes.py reports both)."""
    before = _REFERENCE[0]
    _REFERENCE[0] = True
    try:
        yield
    finally:
        _REFERENCE[0] = before


def _fp16(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.abs().max() > _FP16_MAX:
        raise OverflowError(f"{name}: a quantization scale reaches {float(t.abs().max()):.4g}, beyond fp16's "
                            f"range ({_FP16_MAX:.0f})")
    return t.to(torch.float16)
