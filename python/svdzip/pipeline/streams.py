"""The calibration hidden states flowing from block to block.

One (1, seqlen, d) tensor per window, kept on `store` (the CPU when offloaded, in the model's
dtype) and moved to the block's device `batch_size` windows at a time. Statistics are sums
over windows, so batching changes only how many rows each GEMM sees.
"""

from __future__ import annotations

import torch
from torch import nn


class Streams:
    def __init__(self, hidden: list[torch.Tensor], block_args: list, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} must be >= 1")
        self.hidden = hidden
        self.block_args = block_args
        self.batch_size = batch_size

    @torch.no_grad()
    def run(self, layer: nn.Module, i: int, device, on_batch=None, outputs: str = "new") -> list[torch.Tensor] | None:
        """Block i's outputs for every window (stored where the inputs are); `on_batch()` is
        called before each batch (the statistics collector's new pass). `outputs`: "new" (a new
        list), "replace" (each window's output takes its input's place in `self.hidden`, which is
        returned: one list of hidden states alive instead of two; for Qwen2.5-0.5B's 32 x 512
        windows, 59 MB) or "none" (a pass for its statistics alone)."""
        if outputs not in ("new", "replace", "none"):
            raise ValueError(f"outputs = {outputs!r} must be 'new', 'replace' or 'none'")
        rest, kw = self.block_args[i]
        outs: list[torch.Tensor] = self.hidden if outputs == "replace" else []
        for start in range(0, len(self.hidden), self.batch_size):
            chunk = self.hidden[start:start + self.batch_size]
            store = chunk[0].device
            h = chunk[0].to(device) if len(chunk) == 1 else torch.cat([x.to(device) for x in chunk])
            del chunk
            if on_batch is not None:
                on_batch()
            out = layer(h, *rest, **kw)
            out = out[0] if isinstance(out, tuple) else out
            del h
            if outputs == "replace":
                outs[start:start + self.batch_size] = out.to(store).split(1)
            elif outputs == "new":
                outs.extend(out.to(store).split(1))
        return None if outputs == "none" else outs
