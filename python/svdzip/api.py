"""compress(model, config, calibration) -> Report: the whole job, in place."""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from tqdm.auto import tqdm

from . import allocation, methods, rank
from .calibration.collector import StatsCollector
from .calibration.fisher import row_fisher
from .config import CompressConfig
from .dtypes import model_dtype, to_storage
from .nn import LowRankLinear
from .pipeline import replay
from .pipeline.memory import release_freed_memory
from .pipeline.walk import Target, find_targets
from .report import ModuleReport, Report


def _count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _check_weights(targets: list[Target]) -> None:
    for t in targets:
        w = t.module.weight
        if not torch.isfinite(w).all():
            bad = w[~torch.isfinite(w)].flatten()[0].item()
            raise FloatingPointError(f"{t.name}: weight contains {bad}; refusing to compress")


def _out_error(W: torch.Tensor, D: torch.Tensor, gram: torch.Tensor | None) -> float | None:
    """‖D·X‖ / ‖W·X‖ from the Gram, i.e. √(tr(D G Dᵀ) / tr(W G Wᵀ)). A reported figure, so its
    two m×n×n products run in fp32 (half the time of fp64; ~1e-6 relative error); the sums of
    their elementwise products are taken in fp64."""
    if gram is None:
        return None
    G = gram.float()

    def energy(M: torch.Tensor) -> torch.Tensor:
        Mf = M.float()
        return ((Mf @ G) * Mf).sum(dtype=torch.float64)

    num, den = energy(D), energy(W)
    return float((num.clamp_min(0) / den).sqrt()) if den > 0 else None


def _notes(prepared) -> dict:
    """What the (first-stage) weighting reports: whitening path, dead channels, ..."""
    first = prepared[0] if isinstance(prepared, tuple) else prepared
    return dict(getattr(first, "notes", None) or {})


def _apply(targets: list[Target], stats: dict, cfg, method, report: Report) -> None:
    """Decompose a block's targets with their (shared) prepared statistics, all at once so
    that same-shaped SVDs share one batched call, and swap them in."""
    t0 = time.perf_counter()
    prepared: dict[str, object] = {}
    jobs = []
    for t in targets:
        key = stats.get(t.name, {}).get("leader", t.name)
        if key not in prepared:
            prepared[key] = method.prepare(stats.get(t.name, {}), cfg)
        m, n = t.shape
        jobs.append((t.module.weight.detach().double(), prepared[key], rank.rank_for_ratio(m, n, t.ratio)))
    results = method.decompose_many(jobs, cfg)
    shared_s = (time.perf_counter() - t0) / max(len(targets), 1)  # batched: split evenly
    for i, t in enumerate(targets):
        t0 = time.perf_counter()
        (W, prep, k), (A, B) = jobs[i], results[i]
        jobs[i] = results[i] = None  # let this module's fp64 copies go once it is swapped in
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise FloatingPointError(f"{t.name}: {cfg.method} produced non-finite factors at rank {k}")
        AB = A @ B
        dtype = t.module.weight.dtype
        A, B, balanced = to_storage(A, B, dtype, t.name, float(AB.abs().max()))
        if torch.finfo(dtype).eps > 1e-4:  # bf16 / fp16: report the error of the stored factors
            AB = A.to(dtype).double() @ B.to(dtype).double()
        D = AB.sub_(W).neg_()  # W - A·B, in place of the product (one m x n fp64 buffer)
        m, n = t.shape
        bias = 0 if t.module.bias is None else m
        new = LowRankLinear.from_factors(A, B, t.module.bias, dtype=dtype)
        setattr(t.parent, t.attr, new)
        t.module = None  # the target list outlives this call: let the dense weight go now
        report.modules.append(ModuleReport(
            t.name, (m, n), k, m * n + bias, rank.lowrank_params(m, n, k) + bias,
            float(D.norm() / W.norm()), _out_error(W, D, stats.get(t.name, {}).get("gram")),
            {**_notes(prep), **({"balanced_split": True} if balanced else {})},
            shared_s + time.perf_counter() - t0))


def _check_stats(stats: dict, targets: list[Target], kinds) -> None:
    for t in targets:
        have = set(stats.get(t.name, {}))
        missing = set(kinds) - have
        if missing:
            raise ValueError(f"{t.name}: statistics {sorted(missing)} missing from stats=")


def _by_block(targets: list[Target]) -> dict[int, list[Target]]:
    out: dict[int, list[Target]] = {}
    for t in targets:
        out.setdefault(t.block, []).append(t)
    return out


@torch.no_grad()
def _collect(model, targets, batches, kinds, progress, gram_products) -> dict:
    with StatsCollector({t.name: t.module for t in targets}, kinds, gram_products=gram_products) as col:
        for row in tqdm(batches, desc="statistics", disable=not progress, leave=False):
            col.new_pass()
            model(row.unsqueeze(0).to(next(model.parameters()).device), use_cache=False)
        return col.finalize()


def _check_calibration(config, calibration) -> None:
    if calibration is None or calibration.dim() != 2 or calibration.shape[0] == 0:
        raise ValueError(f"{config.method} needs calibration token ids of shape (N, seqlen), "
                         f"got {None if calibration is None else tuple(calibration.shape)}")


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
             calibration_info: dict | None = None) -> Report:
    """Compress `model` in place with `config`; `calibration` is (N, seqlen) token ids.
    `stats` (from collect_statistics on this same dense model) skips one-shot collection.
    `calibration_info` (e.g. {"source": "wiki", "bos": True}) is recorded in the report."""
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config must be a CompressConfig (e.g. svdzip.NSVDConfig), got {type(config).__name__}")
    t_start = time.perf_counter()
    method = methods.get(config.method)
    kinds = methods.required_stats(config)
    if stats is not None and config.sequential:
        raise ValueError("stats= holds one-shot statistics; sequential=True collects its own")
    if kinds and stats is None:
        _check_calibration(config, calibration)
    left_dense: list = []
    layers, targets = find_targets(model, config, left_dense)
    _check_weights(targets)
    allocated, alloc_stats_s = None, 0.0
    if config.allocation == "sensitivity":
        t0 = time.perf_counter()
        if stats is None and kinds:
            stats = _one_shot(model, targets, calibration, kinds, progress, config.gram_products)
            alloc_stats_s = time.perf_counter() - t0
        config, allocated = _allocate_by_sensitivity(model, layers, targets, stats or {}, config,
                                                     method, calibration, progress)
        allocated["seconds_total"] = time.perf_counter() - t0
        if config.sequential:
            stats = None  # sequential collects its own; the one-shot ones served the trials
        left_dense = []
        layers, targets = find_targets(model, config, left_dense)
    report = Report(config.method, config.to_dict(), model_params_before=_count(model),
                    dense_target_params=sum(p.numel() for m in left_dense for p in m.parameters()),
                    allocation=allocated, seconds_stats=alloc_stats_s,
                    dtype=model_dtype(model),
                    calibration=_calibration_record(calibration, calibration_info))
    blocks = _by_block(targets)
    was_training = model.training
    model.eval()
    try:
        if kinds and (config.sequential or (stats is None and "fisher" not in kinds)):
            # one-shot statistics are streamed block by block too: same numbers, but only one
            # block's Grams are alive at a time instead of every block's
            _blockwise(model, layers, blocks, calibration, kinds, config, method, report, progress,
                       dense_inputs=not config.sequential)
        else:
            t0 = time.perf_counter()
            if stats is None:
                stats = (_one_shot(model, targets, calibration, kinds, progress, config.gram_products)
                         if kinds else {})
            _check_stats(stats, targets, kinds)
            report.seconds_stats += time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in tqdm(sorted(blocks), desc=f"{config.method} blocks", disable=not progress):
                _apply(blocks[i], stats, config, method, report)
            report.seconds_decompose = time.perf_counter() - t0
    finally:
        model.train(was_training)
    report.model_params_after = _count(model)
    report.seconds_total = time.perf_counter() - t_start
    return report


def _calibration_record(calibration, info: dict | None) -> dict:
    """Windows and length, the first token when every window starts with the same one (BOS,
    where the model's convention puts it there), and what the caller says (source, bos)."""
    rec = {}
    if calibration is not None:
        first = calibration[:, 0]
        rec = {"windows": int(calibration.shape[0]), "seqlen": int(calibration.shape[1]),
               "common_first_token": int(first[0]) if bool((first == first[0]).all()) else None}
    return {**rec, **(info or {})}


def _allocate_by_sensitivity(model, layers, targets, stats, config, method, calibration, progress):
    """Per-module ratios from sensitivity trials, returned as exact-name overrides (modules the
    user overrode keep their ratio and count against the budget)."""
    if calibration is None:
        raise ValueError("allocation='sensitivity' needs calibration token ids for its trials")
    user = {t.name for t in targets if rank.match(t.name, config.overrides)}
    free = [t for t in targets if t.name not in user]
    table = allocation.sensitivity_table(model, layers, free, stats, config, method, calibration, progress)
    shapes = {t.name: t.shape for t in targets}
    budget = math.floor(config.ratio * sum(m * n for m, n in shapes.values()))
    budget -= sum(allocation._params(shapes[t.name], t.ratio) for t in targets if t.name in user)
    ratios = allocation.allocate({t.name: table["ppl"][t.name] for t in free}, shapes, budget)
    new = dataclasses.replace(config, overrides={**config.overrides, **ratios})
    info = {"kind": "sensitivity", "ratios": ratios, "dense_slice_ppl": table["dense_ppl"],
            "trial_seconds": table["seconds"], "cached": table["cached"], "budget_params": budget}
    return new, info


def _blockwise(model, layers, blocks, calibration, kinds, config, method, report, progress, dense_inputs):
    """Block by block on cached hidden states: collect block i's statistics, decompose it, move on.

    dense_inputs=True (one-shot): block i sees the outputs of the dense blocks before it, so the
    outputs of its statistics pass (run before it is compressed) feed block i+1 directly: one
    forward's work in all, and only one block's statistics alive at a time.
    dense_inputs=False (sequential): block i sees the already-compressed blocks before it (each
    block is rerun after compression), so its compression corrects for earlier errors."""
    t0 = time.perf_counter()
    hidden, block_args = replay.capture(model, layers, calibration)
    report.seconds_stats += time.perf_counter() - t0
    last = max(blocks)
    desc = f"{config.method} {'one-shot' if dense_inputs else 'sequential'}"
    for i in tqdm(range(last + 1), desc=desc, disable=not progress):
        out = None
        if i in blocks:
            t0 = time.perf_counter()
            with StatsCollector({t.name: t.module for t in blocks[i]}, kinds,
                                gram_products=config.gram_products) as col:
                out = []
                for h in hidden:
                    col.new_pass()
                    out += replay.run_block(layers[i], [h], block_args[i])
                stats = col.finalize()
            report.seconds_stats += time.perf_counter() - t0
            t0 = time.perf_counter()
            _apply(blocks[i], stats, config, method, report)
            del stats
            release_freed_memory()
            report.seconds_decompose += time.perf_counter() - t0
        if i < last:
            t0 = time.perf_counter()
            if out is None or not dense_inputs:
                out = replay.run_block(layers[i], hidden, block_args[i])
            hidden = out
            report.seconds_stats += time.perf_counter() - t0
