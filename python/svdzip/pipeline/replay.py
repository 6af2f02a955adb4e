"""Run decoder blocks one at a time on cached inputs, without copying any model code.

Block 0's hidden states are caught with a pre-hook that stops the forward; every block's
other arguments (masks, position embeddings, ...) are caught once from a dense pass, since
with equal-length unpadded windows they do not depend on the sample.
"""

from __future__ import annotations

import torch
from torch import nn

from .walk import swapped_forwards


class _Stop(Exception):
    pass


def _split(args: tuple, kwargs: dict):
    if args:
        return args[0], args[1:], dict(kwargs)
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def _identity_blocks(layers: nn.ModuleList):
    """Every block passes its hidden states through unchanged: the model's own forward still
    computes what it hands each block (masks, rotary embeddings) without running, or even
    having, the blocks' weights (meta tensors when offloaded)."""
    return swapped_forwards(layers, lambda layer: lambda *args, **kwargs: _split(args, kwargs)[0])


def _run_until_last_block(model, layers, ids: torch.Tensor, hooks) -> None:
    handles = [layer.register_forward_pre_hook(h, with_kwargs=True) for layer, h in zip(layers, hooks) if h]

    def stop_after(mod, args, output):
        raise _Stop  # skip the final norm and the LM head: their logits are the pass's largest tensor

    handles.append(layers[-1].register_forward_hook(stop_after))
    try:
        with _identity_blocks(layers):
            model(ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(model: nn.Module, layers: nn.ModuleList, batches: torch.Tensor, store=None,
            batch_size: int = 1, hidden_states: bool = True):
    """(hidden states entering block 0 per window, [(args, kwargs)] for each block).

    The arguments are caught from one single-window pass (with equal-length unpadded windows
    they do not depend on the sample, and batch-1 masks and rotary tables broadcast over a
    batch); the hidden states from passes of `batch_size` windows, kept on `store` (default:
    the model's device), one (1, seqlen, d) tensor per window."""
    device = model.get_input_embeddings().weight.device
    block_args: list = [None] * len(layers)

    def keep_args(i):
        def hook(mod, args, kwargs):
            _, rest, kw = _split(args, kwargs)
            block_args[i] = (rest, kw)
        return hook

    _run_until_last_block(model, layers, batches[:1].to(device), [keep_args(i) for i in range(len(layers))])
    hidden: list[torch.Tensor] = []
    if not hidden_states:
        return hidden, block_args

    def keep_input(mod, args, kwargs):
        h = _split(args, kwargs)[0]
        hidden.extend(row.unsqueeze(0).to(store or h.device) for row in h)

    for start in range(0, batches.shape[0], batch_size):
        _run_until_last_block(model, layers[:1], batches[start:start + batch_size].to(device), [keep_input])
    return hidden, block_args


@torch.no_grad()
def run_block(layer: nn.Module, hidden: list[torch.Tensor], args_kwargs) -> list[torch.Tensor]:
    rest, kw = args_kwargs
    outs = []
    for h in hidden:
        out = layer(h, *rest, **kw)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def head(model: nn.Module):
    """hidden states after the last block -> logits: the final norm and the LM head, found
    by attribute (no model code copied); Gemma-style final soft-capping applied if configured."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    norm = next((getattr(base, a) for a in ("norm", "final_layernorm", "ln_f") if hasattr(base, a)), None)
    lm_head = model.get_output_embeddings()
    if norm is None or lm_head is None:
        raise NotImplementedError(f"{type(model).__name__}: cannot find the final norm / LM head "
                                  "needed to run the model from a middle block")
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits(h: torch.Tensor) -> torch.Tensor:
        out = lm_head(norm(h))
        return torch.tanh(out / cap) * cap if cap else out
    return logits
