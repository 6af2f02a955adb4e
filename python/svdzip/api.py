"""compress(model, config, calibration) -> Report: the whole job, in place."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import driver, methods
from .calibration.collector import StatsCollector
from .config import CompressConfig
from .hf import mark_compressed
from .pipeline.fisher import row_fisher
from .pipeline.group import from_environment
from .pipeline.inplace import InPlace
from .pipeline.source import InMemory
from .pipeline.walk import find_targets
from .report import Report


def _check_stats(stats: dict, targets: list, kinds) -> None:
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


def collect_statistics(model, config: CompressConfig, calibration: torch.Tensor,
                       kinds=None, progress: bool = True) -> dict[str, dict]:
    """One-shot statistics of the dense model for config's targets, keyed by module name.
    Pass `kinds` (e.g. {"gram", "abs_mean"}) to collect for several methods at once, then
    hand the result to compress(..., stats=...) for each."""
    kinds = set(kinds) if kinds is not None else set(methods.required_stats(config))
    driver.check_calibration(config, calibration, model)
    _, targets = find_targets(model, config)
    driver.check_weights(targets)
    return _one_shot(model, targets, calibration, kinds, progress, config.calibration.gram_products)


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
    (pipeline/group.py). The work itself is driver.run with the model as source and sink."""
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config must be a CompressConfig (e.g. svdzip.NSVDConfig), got {type(config).__name__}")
    if stats is not None:
        _, targets = find_targets(model, config)
        _check_stats(stats, targets, methods.required_stats(config))
    was_training = model.training
    model.eval()
    try:
        report = driver.run(InMemory(model), InPlace(), config, calibration, from_environment(process_group),
                            driver.Options(progress, batch_size, stats, calibration_info))
    finally:
        model.train(was_training)
    mark_compressed(model)  # model.save_pretrained(dir) writes a directory from_pretrained reloads
    return report
