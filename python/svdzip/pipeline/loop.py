"""The block loop: the one place blocks are visited, whatever the weights' source or the
results' destination (see ../shared/docs/design.md).

    for i in blocks:
        block = source.onload(i)            in memory | read from the checkpoint's shards
        stats = collect(block, streams)     hooks on this block only
        decompose + swap                    methods/, batched by shape
        streams advance                     dense (one-shot) or compressed (sequential) outputs
        sink.write(i, block)                nothing | shards + resume state
        source.offload(i)

One-shot (dense_inputs=True): block i sees the dense blocks' outputs, so the outputs of its
statistics pass (run before it is compressed) feed block i+1: one forward in all.
Sequential: block i is rerun after compression, so later blocks correct for earlier errors.
Statistics given beforehand (FWSVD's Fisher sums, which need the whole model's backward):
blocks are only decomposed and written, no hidden states flow.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..calibration.collector import StatsCollector
from ..report import Report
from .decompose import apply_block
from .group import Single, stats_destinations
from .layout import block_tensors
from .memory import release_freed_memory
from .streams import Streams


@dataclass
class Job:
    config: object
    method: object
    kinds: frozenset
    report: Report
    dense_inputs: bool
    progress: bool = True
    stats: dict | None = None  # given beforehand (Fisher): no collection, no forwards needed
    group: object = field(default_factory=Single)  # who sees which windows, who owns which module


@torch.no_grad()
def _collect(layer, targets, streams: Streams, i: int, device, job: Job, advance: bool):
    """(the block's statistics, {module: owner rank}); `advance`: its outputs (dense, one-shot)
    replace the streams' hidden states on the way (else they are not kept at all). In a
    distributed group each rank runs its share of the windows and the sums meet at the owners."""
    group = job.group
    with group.agree(f"collecting block {i}'s statistics"):
        with StatsCollector({t.name: t.module for t in targets}, job.kinds,
                            gram_products=job.config.gram_products) as col:
            streams.run(layer, i, device, on_batch=col.new_pass, outputs="replace" if advance else "none")
        raw = col.raw()
    if not group.distributed:
        return col.finalize(), None
    owner_of = group.owners(targets)
    group.reduce_stats(raw, stats_destinations(targets, col.leader, owner_of))
    with group.agree(f"finishing block {i}'s statistics"):
        stats = col.finalize(raw)
    return stats, owner_of


@contextlib.contextmanager
def _timed(job: Job, phase: str):
    """Adds the body's seconds to report.<phase>, less the time spent in collectives (which
    goes to report.seconds_comm, waiting for slower ranks included)."""
    t0, c0 = time.perf_counter(), job.group.comm_seconds
    try:
        yield
    finally:
        comm = job.group.comm_seconds - c0
        setattr(job.report, phase, getattr(job.report, phase) + time.perf_counter() - t0 - comm)
        job.report.seconds_comm += comm


def run(source, blocks: dict, streams: Streams, job: Job, sink=None, start: int = 0) -> None:
    """Visit blocks start.. in order; `blocks` = {index: [Target]} to compress."""
    last = max(blocks)
    end = len(source.layers) if sink is not None else last + 1  # a sink needs every block written
    desc = f"{job.config.method} {'one-shot' if job.dense_inputs else 'sequential'}"
    for i in tqdm(range(start, end), desc=desc, disable=not job.progress, initial=start, total=end):
        layer = source.onload(i)
        forward = i < last and job.stats is None  # later blocks need this one's outputs
        advanced = False
        if i in blocks:
            with _timed(job, "seconds_stats"):
                if job.stats is None:
                    advanced = forward and job.dense_inputs  # one-shot: the statistics pass advances
                    stats, owner_of = _collect(layer, blocks[i], streams, i, source.device, job, advanced)
                else:
                    stats, owner_of = job.stats, job.group.owners(blocks[i])
            with _timed(job, "seconds_decompose"):
                apply_block(blocks[i], stats, job.config, job.method, job.report, owned=job.stats is None,
                            group=job.group, owner_of=owner_of)
                stats = None
                release_freed_memory()
        with _timed(job, "seconds_stats"):
            if forward and not advanced:
                with job.group.agree(f"running block {i}"):
                    streams.run(layer, i, source.device, outputs="replace")
            elif not forward:
                streams.hidden = []  # no block after this one is compressed: nothing needs them
        if sink is not None:
            sink.write(i, block_tensors(layer, source.prefixes[i]), streams.hidden, job.report.modules)
        source.offload(i)
