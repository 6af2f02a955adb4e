"""run(source, sink, config, calibration, group): compression in every mode, from its parts.

    source   where a block's weights come from: InMemory(model) | Offloaded(checkpoint)
    sink     where finished blocks go: InPlace (the model itself) | ShardSink (shards + resume)
    group    who sees which calibration windows, who owns which module: Single | a process group

`api.compress` (in memory) and `offload.compress_checkpoint` (out of core) only build these
parts and call `run`; every option goes through the same steps in both:

    targets -> Fisher sums (FWSVD) -> allocation plan (strategy) -> targets at the plan's
    ratios -> calibration hidden states -> the block loop (pipeline/loop.py) -> report

What a mode cannot do is refused in `refuse`, with the reason, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from . import allocation, methods
from .calibration.adequacy import thin_calibration
from .config import CompressConfig
from .dtypes import all_finite, model_dtype
from .pipeline import loop, replay
from .pipeline.memory import large_buffers_mmapped
from .pipeline.quantize import ratio_for_bits
from .pipeline.source import InMemory
from .pipeline.streams import streams_for
from .pipeline.trials import DEFAULT_TRIAL_MEMORY
from .pipeline.walk import by_block, find_targets
from .report import Report


@dataclass
class Options:
    progress: bool = True
    batch_size: int = 1                 # calibration windows per block forward (same sums)
    stats: dict | None = None           # one-shot statistics given beforehand (in memory, one process)
    calibration_info: dict | None = None
    trial_memory: int = DEFAULT_TRIAL_MEMORY


def refuse(config, source, group, opts: Options) -> None:
    """Every combination a mode does not support, with the reason (the one list of them)."""
    if opts.stats is not None and config.calibration.sequential:
        raise ValueError("stats= holds one-shot statistics; sequential=True collects its own")
    if opts.stats is not None and group.distributed:
        raise ValueError("stats= with a distributed group: pass the calibration instead (each rank "
                         "collects its share)")
    if opts.stats is not None and not isinstance(source, InMemory):
        raise ValueError("stats= are statistics of a model in memory; out of core, pass the calibration")
    if config.refinement.epochs and group.distributed:
        raise ValueError("refine_epochs > 0 runs on one process for now (each rank holds only its share "
                         "of the windows); compress without torchrun, or without refinement")


def check_calibration(config, calibration, model=None) -> None:
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
    import warnings

    if "gram" not in kinds or calibration is None:
        return []
    note = thin_calibration(calibration.shape[0], calibration.shape[1], {t.name: t.shape[1] for t in targets})
    if note:
        warnings.warn(note, stacklevel=4)
    return [note] if note else []


def check_weights(targets) -> None:
    for t in targets:
        w = t.module.weight
        if not w.is_meta and not all_finite(w):
            bad = w[~torch.isfinite(w)].flatten()[0].item()
            raise FloatingPointError(f"{t.name}: weight contains {bad}; refusing to compress")


def count_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def calibration_record(calibration, info: dict | None) -> dict:
    """Windows and length, the first token when every window starts with the same one (BOS,
    where the model's convention puts it there), and what the caller says (source, bos)."""
    rec = {}
    if calibration is not None:
        first = calibration[:, 0]
        rec = {"windows": int(calibration.shape[0]), "seqlen": int(calibration.shape[1]),
               "common_first_token": int(first[0]) if bool((first == first[0]).all()) else None}
    return {**rec, **(info or {})}


def _fisher(source, sink, targets, share, group, progress) -> dict:
    """FWSVD's row Fisher sums of this rank's share, summed over the ranks; kept for a resume."""
    def compute():
        with group.agree("computing Fisher sums"):
            stats = source.row_fisher(targets, share, sink.scratch("fisher-spill"), progress)
        group.all_reduce_stats(stats)
        return {"tokens": {n: st["tokens"] for n, st in stats.items()}}, {n: st["fisher"] for n, st in stats.items()}

    tokens, fisher = sink.remembered("fisher", compute)
    return {n: {"fisher": f, "tokens": tokens["tokens"][n]} for n, f in fisher.items()}


def _plan(strategy, ctx: allocation.Context, sink) -> tuple[dict, dict | None]:
    """The strategy's ratios and record (with its summary line and time); a strategy that
    computes (remembered) has them kept by an out-of-core sink for a resume."""
    t0 = time.perf_counter()
    if strategy.remembered:
        info, _ = sink.remembered("allocation", lambda: (strategy.plan(ctx)[1], None))
        ratios = info["ratios"]
    else:
        ratios, info = strategy.plan(ctx)
    if info is None:
        return ratios, None
    info = {**info, "summary": strategy.summary(info) or f"allocation {info.get('kind', strategy.name)}"}
    info.setdefault("seconds_total", time.perf_counter() - t0)
    return ratios, info


def run(source, sink, config: CompressConfig, calibration: torch.Tensor | None, group,
        opts: Options | None = None) -> Report:
    """Compress `source`'s targets, block by block, into `sink` (module doc)."""
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config must be a CompressConfig (e.g. svdzip.NSVDConfig), got {type(config).__name__}")
    opts = opts or Options()
    t_start = time.perf_counter()
    method, kinds = methods.get(config.method), methods.required_stats(config)
    refuse(config, source, group, opts)
    large_buffers_mmapped()
    share = slice(None)
    if kinds and opts.stats is None:
        check_calibration(config, calibration, source.model)
        share = group.share(calibration.shape[0])  # fails before any work if too few windows
    progress = opts.progress and group.rank == 0
    _, targets = find_targets(source.model, config)
    check_weights(targets)
    if config.output.bits is not None:  # a byte budget: plan with the ratio that meets it (the caller's config stays)
        config = dataclasses.replace(config, ratio=ratio_for_bits(targets, config, targets[0].module.weight.dtype))
        _, targets = find_targets(source.model, config)
    notes = calibration_warnings(calibration if opts.stats is None else None, targets, kinds)
    t0 = time.perf_counter()
    stats = opts.stats if opts.stats is not None or kinds else {}
    if stats is None and "fisher" in kinds:
        stats = _fisher(source, sink, targets, calibration[share], group, progress)
    # a temporary context: once planned, nothing may keep the first targets' dense modules alive
    ratios, allocated = _plan(allocation.strategy(config), allocation.Context(
        source, targets, config, method, kinds, calibration, stats, opts.batch_size, progress,
        opts.trial_memory, group, sink.scratch), sink)
    prepass_s = time.perf_counter() - t0
    left_dense: list = []
    _, targets = find_targets(source.model, config, left_dense, ratios)
    blocks = by_block(targets)
    sink.prepare(source, targets, config)
    report = Report(config.method, config.to_dict(), modules=list(sink.modules),
                    model_params_before=count_params(source.model),
                    dense_target_params=sum(p.numel() for m in left_dense for p in m.parameters()),
                    dense_target_weights=sum(m.weight.numel() for m in left_dense),
                    dtype=model_dtype(source.model), allocation=allocated, seconds_stats=prepass_s,
                    warnings=notes, calibration=calibration_record(calibration, opts.calibration_info))
    _blocks(source, sink, blocks, config, method, kinds, stats, calibration, share, report, opts, group, progress)
    report.model_params_after = sink.params_after(source)
    report.seconds_total = time.perf_counter() - t_start
    report.distributed = group.summary()
    return report


def _blocks(source, sink, blocks, config, method, kinds, stats, calibration, share, report, opts, group,
            progress) -> None:
    """The calibration hidden states entering block 0 (or the resume point), then the loop."""
    t0 = time.perf_counter()
    if stats is None:  # statistics collected block by block: the hidden states flow
        hidden, block_args = replay.capture(source.model, source.layers, calibration[share], store=source.store,
                                            batch_size=opts.batch_size, hidden_states=sink.start == 0)
        hidden = sink.resumed_hidden() if sink.start > 0 else hidden
    else:  # statistics given (or none needed): the blocks are only decomposed
        hidden, block_args = [], [None] * len(source.layers)
    source.drop_resident()  # only embeddings, norm, head: before any block is onloaded
    report.seconds_stats += time.perf_counter() - t0
    if sink.start > 0 and group.rank == 0:
        print(f"resuming {sink.partial} at block {sink.start} of {len(source.layers)}")
    job = loop.Job(config, method, kinds, report, not config.calibration.sequential, progress, stats, group)
    streams = streams_for(config, hidden, block_args, opts.batch_size, resumed=sink.start > 0)
    loop.run(source, blocks, streams, job, sink if sink.writes else None, start=sink.start)
