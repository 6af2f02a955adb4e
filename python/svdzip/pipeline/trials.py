"""Sensitivity trials (ASVD's per-module perplexity table) in sweeps over the blocks, for any
source of weights: in memory, or read from the checkpoint one block at a time.

A trial is the perplexity of the calibration slice with one target truncated to one candidate
ratio and everything else dense. Block b's trials all start from the dense slice entering b,
so a sweep runs forward once: at each block it advances every live trial's hidden states,
starts the trials of the block's own targets (one SVD per target serves every ratio:
Method.truncator) and advances the dense slice; at the end the LM head scores each trial.
The trials of a run of consecutive blocks share one sweep; the run is as long as their hidden
states fit `trial_memory` bytes, so a sweep holds at most that much above the block loop, and
the number of sweeps (each reading the blocks from its first onward) follows from it. Statistics
for the weighting (Grams, |x| means) are collected from the full calibration set as each block
comes, one block's at a time, unless they are given (Fisher: computed beforehand).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import rank
from ..calibration.collector import StatsCollector
from . import replay
from .group import Single
from .streams import Streams
from .walk import by_block, visit

DEFAULT_TRIAL_MEMORY = 1 << 30


def _nbytes(hidden: list[torch.Tensor]) -> int:
    return sum(h.numel() * h.element_size() for h in hidden)


def sweep_groups(blocks: dict, n_ratios: int, trial_bytes: int, trial_memory: int) -> list[tuple[int, int]]:
    """Consecutive ranges [start, stop) of blocks, each starting at a target block, covering
    every target block once, whose trials' hidden states (targets x ratios x trial_bytes) fit
    trial_memory; a block that alone exceeds it gets its own sweep."""
    starts, used = [], 0
    for b in sorted(blocks):
        need = len(blocks[b]) * n_ratios * trial_bytes
        if not starts or used + need > trial_memory:
            starts.append(b)
            used = 0
        used += need
    return list(zip(starts, starts[1:] + [max(blocks) + 1]))


@torch.no_grad()
def _perplexity(head, hidden: list[torch.Tensor], tokens: torch.Tensor, device) -> float:
    nll, count = 0.0, 0
    for j, h in enumerate(hidden):
        logits = head(h.to(device))[0, :-1].float()
        labels = tokens[j, 1:].to(logits.device)
        nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += labels.numel()
    return math.exp(nll / count)


@torch.no_grad()
def block_stats(layer, b: int, targets, full: Streams, cfg, kinds, device, group) -> dict:
    """The block's statistics on the dense full calibration set (this rank's share, summed
    over the ranks: every rank needs them all); advances `full` past it."""
    with group.agree(f"collecting block {b}'s statistics for the trials"):
        with StatsCollector({t.name: t.module for t in targets}, kinds, gram_products=cfg.calibration.gram_products) as col:
            full.run(layer, b, device, on_batch=col.new_pass, outputs="replace")
        raw = col.raw()
    group.all_reduce_stats(raw)
    with group.agree(f"finishing block {b}'s statistics for the trials"):
        return col.finalize(raw)


@torch.no_grad()
def _start_trials(targets, stats: dict, cfg, method, layer, dense, args, live: dict, bar) -> None:
    prepared: dict[str, object] = {}
    for t in targets:
        st = stats.get(t.name, {})
        key = st.get("leader", t.name)
        if key not in prepared:
            prepared[key] = method.prepare(st, cfg)
        weight = t.module.weight
        original = weight.detach().clone()
        trunc = method.truncator(original.double(), prepared[key], cfg)
        m, n = original.shape
        try:
            for r in cfg.allocation.sensitivity_ratios:
                A, B = trunc(rank.rank_for_ratio(m, n, r))
                weight.copy_((A @ B).to(weight.dtype))  # same product as the low-rank pair
                live[(t.name, r)] = replay.run_block(layer, dense, args)
                bar.update()
        finally:
            weight.copy_(original)


@torch.no_grad()
def _sweep(source, blocks, span, to_the_end: bool, dense, slice_args, full, stats, spec, mine, bar, group):
    """One sweep: the trials of blocks span = [first, stop) started as each block passes and
    carried to the last block (`live`); the dense slice carried along to `stop` (to the end when
    `to_the_end`, for the dense perplexity). Returns (live, the dense slice at the end, the dense
    slice entering `stop`: the next sweep's start)."""
    (first, stop), (cfg, method, kinds), device = span, spec, source.device
    live: dict = {}
    carry, following = dense, None
    for b, layer in visit(source, range(first, len(source.layers))):
        for key, h in live.items():
            live[key] = replay.run_block(layer, h, slice_args[b])
        if b < stop:
            if b in blocks:
                found = stats if full is None else block_stats(layer, b, blocks[b], full, cfg, kinds, device, group)
                with group.agree(f"running block {b}'s trials"):
                    _start_trials([t for t in blocks[b] if t.name in mine], found, cfg, method,
                                  layer, carry, slice_args[b], live, bar)
            elif full is not None:  # a target-free block before a later target
                with group.agree(f"running block {b}"):
                    full.run(layer, b, device, outputs="replace")
        if b < stop or to_the_end:
            carry = replay.run_block(layer, carry, slice_args[b])
            if b == stop - 1:
                following = carry
    return live, carry, following


def sweep_table(source, targets, cfg, method, calibration: torch.Tensor, tokens: torch.Tensor,
                kinds, stats: dict | None = None, batch_size: int = 1, progress: bool = True,
                trial_memory: int = DEFAULT_TRIAL_MEMORY, group=None) -> dict:
    """{"dense_ppl": p, "ppl": {module: {ratio: ppl}}, "sweeps": n} on slice `tokens`.
    `source` must hold its resident parts (embeddings) on entry; it holds them again on exit.
    With a distributed `group`, the trials are dealt round-robin to the ranks (each runs the
    whole slice for its own), the statistics are summed from every rank's share of the
    calibration, and the table is gathered: every rank returns the whole table."""
    t0 = time.perf_counter()
    group = group or Single()
    model, layers, device = source.model, source.layers, source.device
    mine = {t.name for j, t in enumerate(targets) if j % group.world == group.rank}
    blocks = by_block(targets)
    dense, slice_args = replay.capture(model, layers, tokens, store=source.store)
    full = None
    if stats is None and kinds:
        share = calibration[group.share(calibration.shape[0])]
        hidden, args = replay.capture(model, layers, share, store=source.store, batch_size=batch_size)
        full = Streams(hidden, args, batch_size)
    source.drop_resident()
    groups = sweep_groups(blocks, len(cfg.allocation.sensitivity_ratios), _nbytes(dense), trial_memory)
    if len(groups) > 1 and progress:
        print(f"sensitivity: {len(groups)} sweeps (trial hidden states limited to "
              f"{trial_memory / 2**30:.2f} GiB at a time)")
    table: dict[str, dict[float, float]] = {t.name: {} for t in targets}
    dense_ppl = None
    bar = tqdm(total=len(mine) * len(cfg.allocation.sensitivity_ratios), desc="sensitivity trials",
               disable=not progress, leave=False)
    for g, (first, stop) in enumerate(groups):
        live, carry, following = _sweep(source, blocks, (first, stop), g == 0, dense, slice_args, full, stats,
                                        (cfg, method, kinds), mine, bar, group)
        source.onload_resident()
        head = replay.head(model)
        for (name, r), h in live.items():
            table[name][r] = _perplexity(head, h, tokens, device)
        if g == 0:
            dense_ppl = _perplexity(head, carry, tokens, device)
        del live
        if g + 1 < len(groups):
            source.drop_resident()
        dense = following
    bar.close()
    if group.distributed:
        for part in group.gather_objects({n: v for n, v in table.items() if n in mine}):
            table.update(part)
    return {"dense_ppl": dense_ppl, "ppl": table, "sweeps": len(groups),
            "seconds": time.perf_counter() - t0}
