"""Perplexity with the fixed protocol: non-overlapping windows, exp(mean over windows of the
mean token NLL). Windows start with BOS when the model's tokenizer adds one by default (Gemma)
and not otherwise (SmolLM2's protocol: no BOS); `bos=` overrides that."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import data

DEFAULT_WINDOWS = {"wiki": 60, "ptb": 40, "code": 40}


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, desc: str = "ppl", progress: bool = True) -> float:
    """ids: (N, seqlen) windows. Raises if the model produces a non-finite loss."""
    device = next(model.parameters()).device
    nlls = []
    for row in tqdm(ids, desc=desc, disable=not progress, leave=False):
        x = row.unsqueeze(0).to(device)
        logits = model(x, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
        if not torch.isfinite(nll):
            raise FloatingPointError(f"{desc}: non-finite loss {float(nll)} on window {len(nlls)}")
        nlls.append(float(nll))
    return math.exp(sum(nlls) / len(nlls))


def evaluate(model, tokenizer, datasets=("wiki", "ptb"), seqlen: int = 512,
             max_windows: int | None = None, progress: bool = True,
             bos: bool | None = None) -> dict[str, float]:
    """{dataset: ppl}. max_windows defaults to the protocol's (wiki 60, ptb 40; files: all).
    bos=None follows the model's convention (data.default_bos); see protocol() for the record."""
    use_bos = data.resolve_bos(tokenizer, bos)
    out = {}
    for name in datasets:
        n = max_windows if max_windows is not None else DEFAULT_WINDOWS.get(name)
        ids = data.windows(tokenizer, data.text_for(name, "eval"), seqlen, n, use_bos)
        out[name] = perplexity(model, ids, desc=f"ppl {name}", progress=progress)
    return out


def protocol(tokenizer, seqlen: int = 512, max_windows: int | None = None,
             bos: bool | None = None) -> dict:
    """What an evaluation used, to be stored beside its numbers."""
    use_bos = data.resolve_bos(tokenizer, bos)
    return {"seqlen": seqlen, "bos": use_bos, "bos_source": "model default" if bos is None else "override",
            "max_windows": max_windows if max_windows is not None else dict(DEFAULT_WINDOWS)}
