"""compress_checkpoint(path, out, config, calibration): compression out of core.

The model is built on the meta device; each decoder block is read from the checkpoint's
safetensors when its turn comes, compressed, propagated, written to OUT.partial/ as sharded
safetensors with the state to resume, and freed. Embeddings, final norm and head are held only
while block 0's inputs are caught; the block loop then holds about two blocks, the calibration
hidden states and one block's statistics and decomposition, whatever the number of blocks
(pipeline/budget.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import torch

from . import allocation, methods
from .api import _calibration_record, _check_calibration, _count, calibration_warnings
from .calibration.fisher import row_fisher_blockwise
from .config import CompressConfig
from .dtypes import dtype_name
from .pipeline import budget, loop, replay
from .pipeline.group import from_environment
from .pipeline.layout import planned_block, planned_rank_map, resident_tensors
from .pipeline.memory import large_buffers_mmapped
from .pipeline.outdir import check_output
from .pipeline.shards import DEFAULT_SHARD_SIZE, Plan, group_entries
from .pipeline.sink import ShardSink
from .pipeline.source import Offloaded
from .pipeline.streams import streams_for
from .pipeline.trials import DEFAULT_TRIAL_MEMORY
from .pipeline.walk import by_block, find_targets
from .report import Report


def _fisher_pass(sink: ShardSink, source: Offloaded, targets, calibration, batch_size, progress, group) -> dict:
    """FWSVD's Fisher sums, by a block-wise backward (calibration/fisher.py) of this rank's
    share, summed over the ranks; kept for a resume."""
    def compute():
        with group.agree("computing Fisher sums"):
            hidden, block_args = replay.capture(source.model, source.layers, calibration, store=source.store,
                                                batch_size=batch_size)
            spill = sink.state / ("fisher-spill" + (f"-rank{group.rank}" if group.distributed else ""))
            stats = row_fisher_blockwise(source, targets, hidden, block_args, calibration, spill, progress)
            source.onload_resident()
        group.all_reduce_stats(stats)
        return {"tokens": {n: st["tokens"] for n, st in stats.items()}}, {n: st["fisher"] for n, st in stats.items()}

    tokens, fisher = sink.remembered("fisher", compute)
    return {n: {"fisher": f, "tokens": tokens["tokens"][n]} for n, f in fisher.items()}


def _allocation_pass(sink: ShardSink, source: Offloaded, targets, stats, config, method, calibration,
                     kinds, batch_size, progress, trial_memory, group):
    """Sensitivity allocation by sweeps over the offloaded blocks, kept for a resume."""
    def compute():
        _, info = allocation.allocate_by_sensitivity(source, targets, stats, config, method, calibration,
                                                     kinds, batch_size, progress, trial_memory, group)
        return info, None

    info, _ = sink.remembered("allocation", compute)
    return dataclasses.replace(config, overrides={**config.overrides, **info["ratios"]}), info


def _fingerprint(source: Offloaded, config, calibration: torch.Tensor, options: dict) -> dict:
    tokens = hashlib.sha256(calibration.cpu().numpy().tobytes()).hexdigest()
    return {"checkpoint": source.ckpt.fingerprint(), "config": config.to_dict(),
            "calibration": [list(calibration.shape), tokens], "options": options}


def compress_checkpoint(path, out, config: CompressConfig, calibration: torch.Tensor, *,
                        device="cpu", dtype: torch.dtype | None = None, batch_size: int = 1,
                        shard_size: int = DEFAULT_SHARD_SIZE, max_memory: int | None = None,
                        tokenizer=None, progress: bool = True, calibration_info: dict | None = None,
                        trial_memory: int = DEFAULT_TRIAL_MEMORY, process_group=None,
                        overwrite: bool = False) -> Report:
    """Compress the checkpoint directory `path` into `out` one block at a time (see module doc).
    An interrupted run leaves `out`.partial/; the same call resumes it (refusing, with the
    reason, if the checkpoint, config, calibration or options differ). FWSVD's Fisher sums come
    from a block-wise backward; allocation="sensitivity" from sweeps whose trial hidden states
    stay under `trial_memory` bytes (pipeline/trials.py). Under torch.distributed every rank
    reads the blocks from the checkpoint and runs its share of the windows; rank 0 writes the
    output; every rank keeps its share's hidden states in `out`.partial/ for a resume (with
    the same number of ranks). An existing non-empty `out` is refused unless overwrite=True
    (it is replaced only when the new output is complete), and so is `out` in or over `path`."""
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config must be a CompressConfig (e.g. svdzip.NSVDConfig), got {type(config).__name__}")
    if config.allocation == "loss":
        raise ValueError("allocation='loss' is in-memory only for now (its Fisher importances need the "
                         "whole model's backward); compress in memory or use allocation='sensitivity'")
    check_output(out, [path], overwrite, flag="overwrite=True")
    t_start = time.perf_counter()
    method, kinds = methods.get(config.method), methods.required_stats(config)
    large_buffers_mmapped()
    _check_calibration(config, calibration)
    group = from_environment(process_group)
    share = calibration[group.share(calibration.shape[0])]  # fails before any work if too few windows
    progress = progress and group.rank == 0
    source = Offloaded(path, device, dtype)
    _check_calibration(config, calibration, source.model)
    _, targets = find_targets(source.model, config)
    notes = calibration_warnings(calibration, targets, kinds)
    sensitivity = config.allocation == "sensitivity"
    need = budget.estimate(source, by_block(targets), share.shape, batch_size, kinds, config.gram_products,
                           trials=trial_memory if sensitivity else 0,
                           window=group.world if group.distributed and not config.sequential else 1,
                           world=group.world)
    if group.rank == 0:
        print(budget.describe(need, source.device))
    if max_memory is not None and need["total"] > max_memory:
        raise MemoryError(f"expected peak {budget.gib(need['total'])} exceeds max_memory "
                          f"{budget.gib(max_memory)}; refusing to start (lower --n-samples or "
                          f"--batch-size, or allow more memory)")
    options = {"dtype": dtype_name(source.dtype), "batch_size": batch_size, "device": source.device.type,
               "shard_size": shard_size, **({"ranks": group.world} if group.distributed else {})}
    sink = ShardSink(out, _fingerprint(source, config, calibration, options), group, overwrite)
    t0 = time.perf_counter()
    stats = _fisher_pass(sink, source, targets, share, batch_size, progress, group) if "fisher" in kinds else None
    allocated = None
    if sensitivity:
        config, allocated = _allocation_pass(sink, source, targets, stats, config, method, calibration,
                                             kinds, batch_size, progress, trial_memory, group)
    prepass_s = time.perf_counter() - t0
    if allocated is not None:
        allocated["seconds_total"] = prepass_s
    left_dense: list = []
    _, targets = find_targets(source.model, config, left_dense)
    blocks = by_block(targets)
    resident = resident_tensors(source.model, source.prefixes)
    rank_map = planned_rank_map(targets)  # before the loop: it lets go of the dense modules
    sink.open(Plan([group_entries(resident)] + [planned_block(layer, source.prefixes[i], blocks.get(i, []))
                                                for i, layer in enumerate(source.layers)], shard_size))
    sink.write_resident(resident)
    del resident
    report = Report(config.method, config.to_dict(), modules=list(sink.modules),
                    model_params_before=_count(source.model),
                    dense_target_params=sum(p.numel() for m in left_dense for p in m.parameters()),
                    dtype=dtype_name(source.dtype), allocation=allocated, seconds_stats=prepass_s, warnings=notes,
                    calibration=_calibration_record(calibration, calibration_info))
    t0 = time.perf_counter()
    hidden, block_args = replay.capture(source.model, source.layers, share, store=source.store,
                                        batch_size=batch_size, hidden_states=sink.start == 0 and stats is None)
    hidden = sink.resumed_hidden() if sink.start > 0 else hidden
    source.drop_resident()  # called before any block is onloaded: only embeddings, norm, head
    report.seconds_stats += time.perf_counter() - t0
    if sink.start > 0 and group.rank == 0:
        print(f"resuming {sink.partial} at block {sink.start} of {len(source.layers)}")
    job = loop.Job(config, method, kinds, report, not config.sequential, progress, stats, group)
    loop.run(source, blocks, streams_for(config, hidden, block_args, batch_size, resumed=sink.start > 0), job,
             sink, start=sink.start)
    report.model_params_after = sum(math.prod(e.shape) for g in sink.plan.groups for e in g)
    report.seconds_total = time.perf_counter() - t_start

    def extras(directory: Path) -> None:
        from .hf import write_hf_config
        from .meta import write_meta

        write_hf_config(source.model.config, directory, rank_map)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        write_meta(directory, type(source.model).__name__, dtype_name(source.dtype), report)

    report.distributed = group.summary()
    sink.finish(extras)
    return report
