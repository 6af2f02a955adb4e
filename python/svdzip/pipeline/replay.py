"""Run decoder blocks one at a time on cached inputs, without copying any model code.

Block 0's hidden states are caught with a pre-hook that stops the forward; every block's
other arguments (masks, position embeddings, ...) are caught once from a dense pass, since
with equal-length unpadded windows they do not depend on the sample.
"""

from __future__ import annotations

import torch
from torch import nn


class _Stop(Exception):
    pass


def _split(args: tuple, kwargs: dict):
    if args:
        return args[0], args[1:], dict(kwargs)
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


@torch.no_grad()
def capture(model: nn.Module, layers: nn.ModuleList, batches: torch.Tensor):
    """(hidden states entering block 0 per window, [(args, kwargs)] for each block)."""
    device = next(model.parameters()).device
    block_args: list = [None] * len(layers)
    hidden: list[torch.Tensor] = []

    def keep_args(i):
        def hook(mod, args, kwargs):
            if block_args[i] is None:
                _, rest, kw = _split(args, kwargs)
                block_args[i] = (rest, kw)
        return hook

    def stop_after(mod, args, output):
        raise _Stop  # every block's arguments are caught: skip the final norm and the LM head

    handles = [layer.register_forward_pre_hook(keep_args(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    # the LM head's logits would be the largest tensor of the pass (512 tokens x 262k vocab =
    # 512 MiB for Gemma-3), and nothing here needs them
    handles.append(layers[-1].register_forward_hook(stop_after))
    try:
        model(batches[:1].to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()

    def stop(mod, args, kwargs):
        hidden.append(_split(args, kwargs)[0])
        raise _Stop

    h = layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for row in batches:
            try:
                model(row.unsqueeze(0).to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
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
