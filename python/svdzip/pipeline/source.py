"""Where a decoder block's weights come from when its turn comes.

InMemory: the model is already loaded; onload and offload do nothing.
Offloaded: the model is built on the meta device (parameters only: buffers such as rotary
frequencies are computed on the CPU as usual); embeddings, final norm and LM head are read
from the checkpoint at once, each block's tensors only in `onload(i)`, and `offload(i)` turns
the block back into meta tensors, so one block's weights are alive at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import fisher, replay
from .checkpoint import Checkpoint
from .walk import decoder_layers


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def block_prefixes(model: nn.Module, layers: nn.ModuleList) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] + "." for layer in layers]


class InMemory:
    """The whole model is in memory on its device; hidden states stay there too."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.prefixes = block_prefixes(model, self.layers)
        self.device = input_device(model)
        self.store = self.device

    def onload(self, i: int) -> nn.Module:
        return self.layers[i]

    def offload(self, i: int) -> None:
        pass

    def onload_resident(self) -> None:
        pass

    def weight(self, target) -> torch.Tensor:
        return target.module.weight

    def drop_resident(self) -> None:
        pass

    def row_fisher(self, targets, windows: torch.Tensor, spill, progress: bool = True) -> dict:
        """FWSVD's row Fisher sums: the whole model's backward, window by window."""
        return fisher.row_fisher(self.model, targets, windows, progress)

    def block_output_fisher(self, blocks, windows: torch.Tensor, spill, progress: bool = True) -> dict:
        """{block: Σ (∂L/∂z)² per channel of its output}: the whole model's backward."""
        return fisher.block_output_fisher(self.model, windows, progress)


def empty_model(path, dtype: torch.dtype | None = None, config=None) -> nn.Module:
    """The architecture of checkpoint `path` (or of its already-read `config`) with meta
    parameters (real buffers), in `dtype` (default: the checkpoint's own, fp32 if unsaid)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = config or AutoConfig.from_pretrained(path)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # inside the context each assignment made a new meta Parameter: tie again
    return model.eval()


def materialize(module: nn.Module, prefix: str, ckpt: Checkpoint, device, dtype, skip=()) -> None:
    """Replace `module`'s meta parameters (and the checkpoint's persistent buffers) with the
    tensors `prefix + name` read from `ckpt`, cast to `dtype`, on `device`; names starting with
    one of `skip` are left alone. A parameter shared by two names (tied embeddings) is read
    once, under whichever name the checkpoint has."""
    def mine(name):
        return not any(name.startswith(s) for s in skip)

    params = [(n, p) for n, p in module.named_parameters(remove_duplicate=False) if mine(prefix + n)]
    loaded: dict[int, nn.Parameter] = {}
    for name, p in sorted(params, key=lambda np: prefix + np[0] not in ckpt):
        if id(p) not in loaded:
            t = ckpt.read(prefix + name, p.shape, dtype if p.is_floating_point() else None, device)
            loaded[id(p)] = nn.Parameter(t, requires_grad=False)
        _set(module, name, loaded[id(p)], "_parameters")
    for name, b in list(module.named_buffers(remove_duplicate=False)):
        if not mine(prefix + name):
            continue
        if prefix + name in ckpt:
            b = ckpt.read(prefix + name, b.shape, b.dtype, device)
        _set(module, name, b.to(device), "_buffers")


def _set(module: nn.Module, name: str, value, kind: str) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    getattr(owner, kind)[attr] = value


class Offloaded:
    """Blocks read from checkpoint `path` one at a time onto `device`; hidden states kept on
    the CPU (`store`) in the model dtype between blocks."""

    def __init__(self, path, device="cpu", dtype: torch.dtype | None = None) -> None:
        self.path = Path(path)
        self.ckpt = Checkpoint(self.path)
        self.model = empty_model(self.path, dtype)
        self.dtype = next(self.model.parameters()).dtype
        self.device = torch.device(device)
        self.store = torch.device("cpu")
        self.layers = decoder_layers(self.model)
        self.prefixes = block_prefixes(self.model, self.layers)
        self.onload_resident()

    def onload_resident(self) -> None:
        """Everything outside the decoder blocks (embeddings, final norm, LM head, rotary):
        at the start, and again when a pass needs the LM head (Fisher's loss, trial scores)."""
        materialize(self.model, "", self.ckpt, self.device, self.dtype, skip=tuple(self.prefixes))
        self.ckpt.release()

    def drop_resident(self) -> None:
        """Once the hidden states entering block 0 are caught, nothing outside the blocks is
        needed (the loop never runs the final norm or the LM head): back to meta with them.
        For Llama-3-70B that is 4 GB of embeddings and head not held during the block loop."""
        meta: dict[int, nn.Parameter] = {}  # one meta Parameter per shared one: ties survive
        for module in self.model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and not p.is_meta:
                    if id(p) not in meta:
                        meta[id(p)] = nn.Parameter(p.to("meta"), requires_grad=False)
                    module._parameters[name] = meta[id(p)]

    def onload(self, i: int) -> nn.Module:
        layer = self.layers[i]
        materialize(layer, self.prefixes[i], self.ckpt, self.device, self.dtype)
        self.ckpt.release()
        return layer

    def offload(self, i: int) -> None:
        self.layers[i].to("meta")

    def row_fisher(self, targets, windows: torch.Tensor, spill, progress: bool = True) -> dict:
        """FWSVD's row Fisher sums by a block-wise backward (pipeline/fisher.py), block inputs
        spilled to `spill`; the resident parts are held again afterwards."""
        hidden, args = replay.capture(self.model, self.layers, windows, store=self.store)
        try:
            return fisher.row_fisher_blockwise(self, targets, hidden, args, windows, spill, progress)
        finally:
            self.onload_resident()

    def block_output_fisher(self, blocks, windows: torch.Tensor, spill, progress: bool = True) -> dict:
        """{block: Σ (∂L/∂z)² per channel of its output} by a block-wise backward."""
        hidden, args = replay.capture(self.model, self.layers, windows, store=self.store)
        try:
            return fisher.block_output_fisher_blockwise(self, blocks, hidden, args, windows, spill, progress)
        finally:
            self.onload_resident()

    def weight(self, target) -> torch.Tensor:
        """A target's weight as the model would hold it, read from the checkpoint (its block
        need not be onloaded)."""
        w = self.ckpt.read(target.name + ".weight", target.shape, self.dtype)
        self.ckpt.release()
        return w
