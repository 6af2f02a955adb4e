"""The calibration hidden states flowing from block to block.

One (1, seqlen, d) tensor per window, kept on `store` (the CPU when offloaded, in the model's
dtype) and moved to the block's device `batch_size` windows at a time. Statistics are sums
over windows, so batching changes only how many rows each GEMM sees.
"""

from __future__ import annotations

import torch
from torch import nn

from ..calibration.collector import InputCapture


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
            store = self.hidden[start].device
            h = self._batch(self.hidden, start, device)
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

    def _batch(self, hidden: list[torch.Tensor], start: int, device) -> torch.Tensor:
        """Windows start.. start + batch_size of `hidden` as one tensor on `device`."""
        chunk = hidden[start:start + self.batch_size]
        return chunk[0].to(device) if len(chunk) == 1 else torch.cat([x.to(device) for x in chunk])

    def collect(self, layer: nn.Module, i: int, device, collector, outputs: str) -> None:
        """The statistics pass of block i (`collector` hooked on its targets)."""
        self.run(layer, i, device, on_batch=collector.new_pass, outputs=outputs)

    def advance(self, layer: nn.Module, i: int, device) -> None:
        """Block i's outputs replace its inputs (the hidden states entering block i + 1)."""
        self.run(layer, i, device, outputs="replace")

    def drop(self) -> None:
        """No later block needs hidden states."""
        self.hidden = []

    def saved(self) -> list[torch.Tensor]:
        """What a resume point stores (streams_for(..., resumed=True) rebuilds from it)."""
        return self.hidden


class PairedStreams(Streams):
    """The compressed model's hidden states (`hidden`) beside the dense model's (`dense`) at
    the same windows, for the compensated objective: each statistics pass runs the block on
    the dense stream first, batch by batch, capturing every target's dense input, then on the
    compressed stream with the collector pairing each input with its dense twin (the
    cross-Gram); that pass also moves the dense stream on. Twice the hidden-state memory and
    one more forward per block than the sequential pipeline."""

    def __init__(self, hidden: list[torch.Tensor], block_args: list, batch_size: int = 1,
                 dense: list[torch.Tensor] | None = None) -> None:
        super().__init__(hidden, block_args, batch_size)
        self.dense = [h.clone() for h in hidden] if dense is None else dense
        if len(self.dense) != len(self.hidden):
            raise ValueError(f"{len(self.dense)} dense windows for {len(self.hidden)} compressed ones")
        self.dense_at: int | None = None  # the block the dense stream has already been moved past

    @torch.no_grad()
    def collect(self, layer: nn.Module, i: int, device, collector, outputs: str) -> None:
        if outputs != "none":
            raise ValueError("paired streams: the compressed stream advances after compression only")
        rest, kw = self.block_args[i]
        for start in range(0, len(self.hidden), self.batch_size):
            dense = self._batch(self.dense, start, device)
            with collector.suspended(), InputCapture(collector.modules) as cap:
                out = layer(dense, *rest, **kw)
            out = out[0] if isinstance(out, tuple) else out
            self.dense[start:start + self.batch_size] = out.to(self.dense[start].device).split(1)
            del dense, out
            collector.new_pass()
            collector.paired = cap.inputs
            layer(self._batch(self.hidden, start, device), *rest, **kw)
            collector.paired = None
        self.dense_at = i

    def advance(self, layer: nn.Module, i: int, device) -> None:
        if self.dense_at != i:  # a block left dense: both streams go through it
            Streams(self.dense, self.block_args, self.batch_size).run(layer, i, device, outputs="replace")
        self.dense_at = i
        super().advance(layer, i, device)

    def drop(self) -> None:
        self.hidden, self.dense = [], []

    def saved(self) -> list[torch.Tensor]:
        return self.hidden + self.dense


def streams_for(config, hidden: list[torch.Tensor], block_args: list, batch_size: int = 1,
                resumed: bool = False) -> Streams:
    """The streams a config's pipeline needs; `resumed`: `hidden` is what saved() stored."""
    paired = config.objective.kind == "compensated" or config.refinement.epochs > 0
    if not paired:
        return Streams(hidden, block_args, batch_size)
    if not resumed:
        return PairedStreams(hidden, block_args, batch_size)
    half = len(hidden) // 2
    return PairedStreams(hidden[:half], block_args, batch_size, dense=hidden[half:])
