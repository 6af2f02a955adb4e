"""Fisher importance for FWSVD: per output row, Σ over calibration windows of Σ_j (∂L/∂W_ij)²
of the causal LM loss."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def row_fisher(model, targets, batches: torch.Tensor, progress: bool = True) -> dict[str, dict]:
    device = next(model.parameters()).device
    weights = {t.name: t.module.weight for t in targets}
    before = {p: p.requires_grad for p in model.parameters()}
    acc = {n: torch.zeros(w.shape[0], dtype=torch.float64, device=device) for n, w in weights.items()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for row in tqdm(batches, desc="fisher", disable=not progress, leave=False):
            x = row.unsqueeze(0).to(device)
            loss = model(x, labels=x, use_cache=False).loss
            loss.backward()
            for n, w in weights.items():
                acc[n] += w.grad.double().pow(2).sum(1)
                w.grad = None
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)
            p.grad = None
    for n, a in acc.items():
        if not torch.isfinite(a).all():
            raise FloatingPointError(f"{n}: Fisher importance is not finite (NaN/Inf gradients)")
    return {n: {"fisher": a, "tokens": batches.numel()} for n, a in acc.items()}
