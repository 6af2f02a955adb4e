"""compress(model, config, calibration) -> Report: the whole job, in place."""

from __future__ import annotations

import time
import warnings

import torch
from tqdm.auto import tqdm

from . import allocation, methods
from .calibration.adequacy import thin_calibration
from .calibration.collector import StatsCollector
from .calibration.fisher import row_fisher
from .config import CompressConfig
from .dtypes import all_finite, model_dtype
from .hf import mark_compressed
from .pipeline import loop, replay
from .pipeline.decompose import apply_block
from .pipeline.group import Single, from_environment
from .pipeline.memory import large_buffers_mmapped
from .pipeline.source import InMemory
from .pipeline.streams import streams_for
from .pipeline.walk import Target, by_block, find_targets
from .report import Report


def _count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _check_weights(targets: list[Target]) -> None:
    for t in targets:
        w = t.module.weight
        if not all_finite(w):
            bad = w[~torch.isfinite(w)].flatten()[0].item()
            raise FloatingPointError(f"{t.name}: weight contains {bad}; refusing to compress")


def _check_stats(stats: dict, targets: list[Target], kinds) -> None:
    for t in targets:
        have = set(stats.get(t.name, {}))
        missing = set(kinds) - have
        if missing:
            raise ValueError(f"{t.name}: statistics {sorted(missing)} missing from stats=")


@torch.no_grad()
def _collect(model, targets, batches, kinds, progress, gram_products) -> dict:
    with StatsCollector({t.name: t.module for t in targets}, kinds, gram_products=gram_products) as col:
        for row in tqdm(batches, desc="statistics", disable=not progress, leave=False):
            col.new_pass()
            model(row.unsqueeze(0).to(next(model.parameters()).device), use_cache=False)
        return col.finalize()


def _check_calibration(config, calibration, model=None) -> None:
    if calibration is None or calibration.dim() != 2 or calibration.shape[0] == 0:
        raise ValueError(f"{config.method} needs calibration token ids of shape (N, seqlen), "
                         f"got {None if calibration is None else tuple(calibration.shape)}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and calibration.shape[1] > limit:
        raise ValueError(f"calibration windows of {calibration.shape[1]} tokens exceed the model's "
                         f"{limit} positions (max_position_embeddings)")


def calibration_warnings(calibration, targets, kinds) -> list[str]:
    """Warned (and kept for the report) before the first forward: a calibration set too small
    for the layers' input widths (calibration/adequacy.py)."""
    if "gram" not in kinds or calibration is None:
        return []
    note = thin_calibration(calibration.shape[0], calibration.shape[1], {t.name: t.shape[1] for t in targets})
    if note:
        warnings.warn(note, stacklevel=3)
    return [note] if note else []


def collect_statistics(model, config: CompressConfig, calibration: torch.Tensor,
                       kinds=None, progress: bool = True) -> dict[str, dict]:
    """One-shot statistics of the dense model for config's targets, keyed by module name.
    Pass `kinds` (e.g. {"gram", "abs_mean"}) to collect for several methods at once, then
    hand the result to compress(..., stats=...) for each."""
    kinds = set(kinds) if kinds is not None else set(methods.required_stats(config))
    _check_calibration(config, calibration)
    _, targets = find_targets(model, config)
    _check_weights(targets)
    return _one_shot(model, targets, calibration, kinds, progress, config.gram_products)


def _one_shot(model, targets, calibration, kinds, progress, gram_products) -> dict[str, dict]:
    if "fisher" in kinds:
        return row_fisher(model, targets, calibration, progress)
    return _collect(model, targets, calibration, kinds, progress, gram_products)


def compress(model, config: CompressConfig, calibration: torch.Tensor | None = None,
             progress: bool = True, stats: dict | None = None,
             calibration_info: dict | None = None, batch_size: int = 1,
             process_group=None) -> Report:
    """Compress `model` in place with `config`; `calibration` is (N, seqlen) token ids.
    `stats` (from collect_statistics on this same dense model) skips one-shot collection.
    `calibration_info` (e.g. {"source": "wiki", "bos": True}) is recorded in the report.
    `batch_size` windows go through each block at once (same statistics: they are sums).
    Under torch.distributed (torchrun, or `process_group=`), every rank calls this with the
    same model and calibration: each runs its share of the windows, each module is decomposed
    by one owner rank and its factors broadcast, so every rank ends with the same model
    (pipeline/group.py)."""
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config must be a CompressConfig (e.g. svdzip.NSVDConfig), got {type(config).__name__}")
    t_start = time.perf_counter()
    method = methods.get(config.method)
    large_buffers_mmapped()
    kinds = methods.required_stats(config)
    group = from_environment(process_group)
    progress = progress and group.rank == 0
    if stats is not None and config.sequential:
        raise ValueError("stats= holds one-shot statistics; sequential=True collects its own")
    if stats is not None and group.distributed:
        raise ValueError("stats= with a distributed group: pass the calibration instead (each rank "
                         "collects its share)")
    share = slice(None)
    if kinds and stats is None:
        _check_calibration(config, calibration, model)
        share = group.share(calibration.shape[0])  # fails before any work if too few windows
    left_dense: list = []
    layers, targets = find_targets(model, config, left_dense)
    _check_weights(targets)
    notes = calibration_warnings(calibration if stats is None else None, targets, kinds)
    allocated, alloc_stats_s = None, 0.0
    if config.allocation == "sensitivity":
        t0 = time.perf_counter()
        if stats is None and "fisher" in kinds:  # gradients of the whole model: before the trials
            stats = _fisher(model, targets, calibration, share, group, progress)
            alloc_stats_s = time.perf_counter() - t0
        config, allocated = allocation.allocate_by_sensitivity(
            InMemory(model), targets, stats, config, method, calibration, kinds, batch_size, progress,
            group=group)
        allocated["seconds_total"] = time.perf_counter() - t0
        if config.sequential:
            stats = None  # sequential collects its own
        left_dense = []
        layers, targets = find_targets(model, config, left_dense)
    elif config.allocation == "loss":
        t0 = time.perf_counter()
        config, allocated = allocation.allocate_by_loss(InMemory(model), model, targets, config, calibration,
                                                        batch_size, progress, group)
        allocated["seconds_total"] = time.perf_counter() - t0
        left_dense = []
        layers, targets = find_targets(model, config, left_dense)
    report = Report(config.method, config.to_dict(), model_params_before=_count(model),
                    dense_target_params=sum(p.numel() for m in left_dense for p in m.parameters()),
                    allocation=allocated, seconds_stats=alloc_stats_s,
                    dtype=model_dtype(model), warnings=notes,
                    calibration=_calibration_record(calibration, calibration_info))
    blocks = by_block(targets)
    was_training = model.training
    model.eval()
    try:
        if kinds and (config.sequential or (stats is None and "fisher" not in kinds)):
            # one-shot statistics are streamed block by block too: same numbers, but only one
            # block's Grams are alive at a time instead of every block's
            _blockwise(model, blocks, calibration[share], kinds, config, method, report, progress,
                       dense_inputs=not config.sequential, batch_size=batch_size, group=group)
        else:
            t0 = time.perf_counter()
            if stats is None and "fisher" in kinds:
                stats = _fisher(model, targets, calibration, share, group, progress)
            elif stats is None:
                stats = {}  # a method without statistics (plain SVD)
            _check_stats(stats, targets, kinds)
            report.seconds_stats += time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in tqdm(sorted(blocks), desc=f"{config.method} blocks", disable=not progress):
                apply_block(blocks[i], stats, config, method, report, group=group,
                            owner_of=group.owners(blocks[i]))
            report.seconds_decompose = time.perf_counter() - t0
    finally:
        model.train(was_training)
    report.model_params_after = _count(model)
    report.seconds_total = time.perf_counter() - t_start
    report.distributed = group.summary()
    mark_compressed(model)  # model.save_pretrained(dir) writes a directory from_pretrained reloads
    return report


def _fisher(model, targets, calibration, share, group, progress) -> dict:
    """FWSVD's row Fisher sums: each rank's share, summed over the ranks."""
    with group.agree("computing Fisher sums"):
        stats = row_fisher(model, targets, calibration[share], progress)
    group.all_reduce_stats(stats)
    return stats


def _calibration_record(calibration, info: dict | None) -> dict:
    """Windows and length, the first token when every window starts with the same one (BOS,
    where the model's convention puts it there), and what the caller says (source, bos)."""
    rec = {}
    if calibration is not None:
        first = calibration[:, 0]
        rec = {"windows": int(calibration.shape[0]), "seqlen": int(calibration.shape[1]),
               "common_first_token": int(first[0]) if bool((first == first[0]).all()) else None}
    return {**rec, **(info or {})}


def _blockwise(model, blocks, calibration, kinds, config, method, report, progress, dense_inputs,
               batch_size: int = 1, group=None):
    """Block by block on cached hidden states (pipeline/loop.py), the model in memory;
    `calibration` is this rank's share."""
    source = InMemory(model)
    t0 = time.perf_counter()
    hidden, block_args = replay.capture(model, source.layers, calibration, batch_size=batch_size)
    report.seconds_stats += time.perf_counter() - t0
    job = loop.Job(config, method, kinds, report, dense_inputs, progress, group=group or Single())
    loop.run(source, blocks, streams_for(config, hidden, block_args, batch_size), job)
