"""The block loop: the one place blocks are compressed, whatever the weights' source or the
results' destination (docs/design.md); it runs on walk.visit like every other pass.

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
from .decompose import apply_block, apply_blocks
from .group import Single, stats_destinations
from .layout import block_tensors
from .memory import release_freed_memory
from .refine import refine_block
from .streams import Streams
from .walk import visit, visit_windows


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
def collect_block(layer, targets, streams: Streams, i: int, device, job: Job, advance: bool, owner_of=None):
    """(the block's statistics, {module: owner rank}); `advance`: its outputs (dense, one-shot)
    replace the streams' hidden states on the way (else they are not kept at all). In a
    distributed group each rank runs its share of the windows and the sums meet at the owners
    (`owner_of`, or the block's own bin-packing)."""
    group = job.group
    with group.agree(f"collecting block {i}'s statistics"):
        with StatsCollector({t.name: t.module for t in targets}, job.kinds,
                            gram_products=job.config.calibration.gram_products) as col:
            streams.collect(layer, i, device, col, outputs="replace" if advance else "none")
        raw = col.raw()
    if not group.distributed:
        return col.finalize(), None
    owner_of = owner_of or group.owners(targets)
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


def _refine(layer, i: int, streams, job: Job, device) -> None:
    """Block i's factors tuned to the dense model's block outputs (pipeline/refine.py): the
    paired streams hold the compressed inputs and, past their statistics pass, the dense outputs."""
    rec = refine_block(layer, i, streams.hidden, streams.dense, streams.block_args[i], job.config, device)
    job.report.refinement.append(rec)
    if job.progress:
        tqdm.write(f"block {i}: refined {rec['epochs']} epochs, held-out MSE {rec['heldout_before']:.4g} -> "
                   f"{rec['heldout_after']:.4g} ({rec['seconds']:.1f} s)")


def run(source, blocks: dict, streams: Streams, job: Job, sink=None, start: int = 0) -> None:
    """Visit blocks start.. in order; `blocks` = {index: [Target]} to compress."""
    if job.group.distributed and job.dense_inputs and job.stats is None and job.group.world > 1:
        return run_windows(source, blocks, streams, job, sink, start, window=job.group.world)
    last = max(blocks)
    end = len(source.layers) if sink is not None else last + 1  # a sink needs every block written
    desc = f"{job.config.method} {'one-shot' if job.dense_inputs else 'sequential'}"
    for i, layer in visit(source, range(start, end), desc, job.progress, initial=start, total=end):
        forward = i < last and job.stats is None  # later blocks need this one's outputs
        advanced = False
        if i in blocks:
            with _timed(job, "seconds_stats"):
                if job.stats is None:
                    advanced = forward and job.dense_inputs  # one-shot: the statistics pass advances
                    stats, owner_of = collect_block(layer, blocks[i], streams, i, source.device, job, advanced)
                else:
                    stats, owner_of = job.stats, job.group.owners(blocks[i])
            with _timed(job, "seconds_decompose"):
                apply_block(blocks[i], stats, job.config, job.method, job.report, owned=job.stats is None,
                            group=job.group, owner_of=owner_of)
                stats = None
                release_freed_memory()
            if job.config.refinement.epochs:
                with _timed(job, "seconds_refine"):
                    _refine(layer, i, streams, job, source.device)
        with _timed(job, "seconds_stats"):
            if forward and not advanced:
                with job.group.agree(f"running block {i}"):
                    streams.advance(layer, i, source.device)
            elif not forward:
                streams.drop()  # no block after this one is compressed: nothing needs them
        if sink is not None:
            sink.write(i, block_tensors(layer, source.prefixes[i]), streams.saved(), job.report.modules)


def run_windows(source, blocks: dict, streams: Streams, job: Job, sink=None, start: int = 0,
                window: int = 2) -> None:
    """One-shot in a distributed group, `window` blocks at a time: one-shot statistics do not
    depend on the compressed blocks, so the statistics of the window's blocks are collected
    (each reduced at once to its module's owner, owners bin-packed over the whole window) before
    any of them is decomposed, and then every rank decomposes its share of the window's modules
    at the same time. Per block, a block's largest module caps the speed-up (Llama-3-8B's
    down_proj: 41 % of a block's cost); over N blocks there are 7N modules for N ranks. Each
    rank holds about window / world blocks' statistics, and the window's blocks stay onloaded
    until their factors are in. Resume points are window boundaries."""
    last = max(blocks)
    end = len(source.layers) if sink is not None else last + 1
    bar = tqdm(total=end, initial=start, desc=f"{job.config.method} one-shot x{job.group.world}",
               disable=not job.progress)
    spans = (range(first, min(first + window, end)) for first in range(start, end, window))
    for span, layers in visit_windows(source, spans, bar):
        targets = [t for i in span for t in blocks.get(i, [])]
        owner_of = job.group.owners(targets) if targets else {}
        parts = []
        for i, layer in layers.items():
            with _timed(job, "seconds_stats"):
                if i in blocks:
                    stats, _ = collect_block(layer, blocks[i], streams, i, source.device, job, i < last, owner_of)
                    parts.append((blocks[i], stats))
                elif i < last:
                    with job.group.agree(f"running block {i}"):
                        streams.advance(layer, i, source.device)
                else:
                    streams.drop()
        with _timed(job, "seconds_decompose"):
            apply_blocks(parts, job.config, job.method, job.report, owned=True, group=job.group,
                         owner_of=owner_of)
            parts = None
            release_freed_memory()
        if sink is not None:  # the hidden states are those entering the window's end
            for i, layer in layers.items():
                sink.write(i, block_tensors(layer, source.prefixes[i]), streams.saved(), job.report.modules,
                           resume_point=i == span[-1])
    bar.close()
