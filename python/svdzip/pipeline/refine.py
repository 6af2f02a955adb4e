"""Block-wise refinement: after a block is decomposed, tune its low-rank factors (and nothing
else) so that the compressed block, fed the compressed model's hidden states, reproduces the
dense model's block outputs (MSE), on the calibration windows only.

The error is weighted per hidden channel (`refine_weighting`): "none" is the plain MSE, which a
few huge residual-stream channels dominate (SmolLM2: refinement lowered every block's held-out
MSE and made the model worse); "channel" divides each channel's squared error by that channel's
mean square in the dense targets (training windows), so every channel's relative error counts
alike, as the next block's RMSNorm largely sees it.

The windows are split once: the last `refine_holdout` share is held out, the rest trains
(Adam, one window batch per step, order shuffled per epoch by a seeded generator). After each
epoch the held-out MSE is measured; the factors with the lowest held-out MSE so far are kept
(the unrefined factors are "epoch 0"), and training stops at the first epoch that does not
improve it. So refinement never makes the held-out slice worse. Training runs in float32 on a
copy of the block (bf16 / fp16 models too); the kept factors are copied back in the model's
dtype. A non-finite loss aborts with the block's name and leaves the unrefined factors.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..nn import LowRankLinear


def _factors(layer: nn.Module) -> dict[str, LowRankLinear]:
    return {name: m for name, m in layer.named_modules() if isinstance(m, LowRankLinear)}


def _squared_error(work: nn.Module, x: torch.Tensor, y: torch.Tensor, block_args, device,
                   weight: torch.Tensor | None) -> torch.Tensor:
    """(block(x) − y)² elementwise (times the per-channel `weight`), in float32 on `device`."""
    rest, kw = block_args
    out = work(x.to(device, torch.float32), *rest, **kw)
    out = out[0] if isinstance(out, tuple) else out
    err = (out - y.to(device, torch.float32)).square()
    return err if weight is None else err * weight


def channel_weights(targets: list[torch.Tensor], idx, kind: str, device) -> torch.Tensor | None:
    """None for "none"; for "channel" 1 / (mean square of each hidden channel of the dense
    targets at windows `idx`), scaled to mean 1 (a channel that is zero throughout gets the
    largest finite weight of the others instead of infinity)."""
    if kind == "none":
        return None
    ms = sum(targets[j].to(device, torch.float32).square().reshape(-1, targets[j].shape[-1]).sum(0) for j in idx)
    ms = ms / sum(targets[j].numel() // targets[j].shape[-1] for j in idx)
    w = torch.where(ms > 0, 1.0 / ms.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(ms))
    w = torch.where(ms > 0, w, w.max())
    return w / w.mean()


def _mse(work: nn.Module, inputs, targets, idx, block_args, device, weight) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for j in idx:
            err = _squared_error(work, inputs[j], targets[j], block_args, device, weight)
            total += float(err.sum())
            count += err.numel()
    return total / max(count, 1)


def refine_block(layer: nn.Module, i: int, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                 block_args, cfg, device) -> dict:
    """Tune block i's LowRankLinear factors in place; `inputs` = the compressed stream's hidden
    states entering the block, `targets` = the dense model's block outputs at the same windows.
    Returns {"block", "epochs" (kept), "heldout_before", "heldout_after", "seconds"}."""
    t0 = time.perf_counter()
    factors = _factors(layer)
    n = len(inputs)
    held = max(1, round(cfg.refinement.holdout * n))
    if not factors or n - held < 1:
        return {"block": i, "epochs": 0, "heldout_before": 0.0, "heldout_after": 0.0, "seconds": 0.0,
                "skipped": "no factors" if not factors else f"{n} windows: too few to hold {held} out"}
    train, heldout = list(range(n - held)), list(range(n - held, n))
    work = copy.deepcopy(layer).float()
    params = [p for m in _factors(work).values() for p in (m.A, m.B)]
    for p in work.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    weight = channel_weights(targets, train, cfg.refinement.weighting, device)
    best = _mse(work, inputs, targets, heldout, block_args, device, weight)
    before, kept = best, 0
    best_state = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=cfg.refinement.lr)
    gen = torch.Generator().manual_seed(cfg.refinement.seed + i)
    for epoch in range(1, cfg.refinement.epochs + 1):
        for j in torch.randperm(len(train), generator=gen).tolist():
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = _squared_error(work, inputs[train[j]], targets[train[j]], block_args, device, weight).mean()
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"block {i}: refinement loss became {loss.detach().item()} in epoch "
                                             f"{epoch}; the block keeps its unrefined factors")
                loss.backward()
            opt.step()
        score = _mse(work, inputs, targets, heldout, block_args, device, weight)
        if not score < best:  # NaN or no better: stop, keep the best so far
            break
        best, kept = score, epoch
        best_state = [p.detach().clone() for p in params]
    if kept:
        with torch.no_grad():
            for mod, A, B in zip(factors.values(), best_state[0::2], best_state[1::2]):
                mod.A.copy_(A.to(mod.A.dtype))
                mod.B.copy_(B.to(mod.B.dtype))
    return {"block": i, "epochs": kept, "heldout_before": before, "heldout_after": best,
            "seconds": time.perf_counter() - t0}
