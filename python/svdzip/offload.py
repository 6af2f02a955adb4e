"""compress_checkpoint(path, out, config, calibration): compression out of core.

The model is built on the meta device; each decoder block is read from the checkpoint's
safetensors when its turn comes, compressed, propagated, written to OUT.partial/ as sharded
safetensors with the state to resume, and freed. Embeddings, final norm and head are held only
while block 0's inputs are caught (and for the Fisher passes' loss gradient); the block loop
then holds about two blocks, the calibration hidden states and one block's statistics and
decomposition, whatever the number of blocks (pipeline/budget.py). The work itself is
driver.run with the checkpoint as source and the shards as sink.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from . import allocation, driver, methods
from .config import CompressConfig
from .dtypes import dtype_name
from .pipeline import budget
from .pipeline.group import from_environment
from .pipeline.outdir import check_output
from .pipeline.shards import DEFAULT_SHARD_SIZE
from .pipeline.sink import ShardSink
from .pipeline.source import Offloaded
from .pipeline.trials import DEFAULT_TRIAL_MEMORY
from .pipeline.walk import by_block, find_targets
from .report import Report


def _fingerprint(source: Offloaded, config, calibration: torch.Tensor, options: dict) -> dict:
    tokens = hashlib.sha256(calibration.cpu().numpy().tobytes()).hexdigest()
    return {"checkpoint": source.ckpt.fingerprint(), "config": config.to_dict(),
            "calibration": [list(calibration.shape), tokens], "options": options}


def _memory_check(source, config, share, batch_size, trial_memory, max_memory, group) -> None:
    """Print the expected peak; refuse to start past `max_memory`."""
    _, targets = find_targets(source.model, config)
    kinds = methods.required_stats(config)
    extra = allocation.strategy(config).extra_memory(config, trial_memory)
    need = budget.estimate(source, by_block(targets), share.shape, batch_size, kinds, config.calibration.gram_products,
                           trials=extra, window=group.world if group.distributed and not config.calibration.sequential else 1,
                           world=group.world)
    if group.rank == 0:
        print(budget.describe(need, source.device))
    if max_memory is not None and need["total"] > max_memory:
        raise MemoryError(f"expected peak {budget.gib(need['total'])} exceeds max_memory "
                          f"{budget.gib(max_memory)}; refusing to start (lower --n-samples or "
                          f"--batch-size, or allow more memory)")


def compress_checkpoint(path, out, config: CompressConfig, calibration: torch.Tensor, *,
                        device="cpu", dtype: torch.dtype | None = None, batch_size: int = 1,
                        shard_size: int = DEFAULT_SHARD_SIZE, max_memory: int | None = None,
                        tokenizer=None, progress: bool = True, calibration_info: dict | None = None,
                        trial_memory: int = DEFAULT_TRIAL_MEMORY, process_group=None,
                        overwrite: bool = False) -> Report:
    """Compress the checkpoint directory `path` into `out` one block at a time (see module doc).
    An interrupted run leaves `out`.partial/; the same call resumes it (refusing, with the
    reason, if the checkpoint, config, calibration or options differ). Fisher sums (FWSVD, the
    loss allocation's importances) come from a block-wise backward; allocation="sensitivity"
    from sweeps whose trial hidden states stay under `trial_memory` bytes (pipeline/trials.py).
    Under torch.distributed every rank reads the blocks from the checkpoint and runs its share
    of the windows; rank 0 writes the output; every rank keeps its share's hidden states in
    `out`.partial/ for a resume (with the same number of ranks). An existing non-empty `out` is
    refused unless overwrite=True (it is replaced only when the new output is complete), and so
    is `out` in or over `path`."""
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config must be a CompressConfig (e.g. svdzip.NSVDConfig), got {type(config).__name__}")
    check_output(out, [path], overwrite, flag="overwrite=True")
    driver.check_calibration(config, calibration)
    group = from_environment(process_group)
    share = calibration[group.share(calibration.shape[0])]  # fails before any work if too few windows
    source = Offloaded(path, device, dtype)
    _memory_check(source, config, share, batch_size, trial_memory, max_memory, group)
    options = {"dtype": dtype_name(source.dtype), "batch_size": batch_size, "device": source.device.type,
               "shard_size": shard_size, **({"ranks": group.world} if group.distributed else {})}
    sink = ShardSink(out, _fingerprint(source, config, calibration, options), group, overwrite, shard_size)
    report = driver.run(source, sink, config, calibration, group,
                        driver.Options(progress, batch_size, None, calibration_info, trial_memory))

    def extras(directory: Path) -> None:
        from .hf import write_hf_config
        from .meta import write_meta

        write_hf_config(source.model.config, directory, sink.rank_map)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        write_meta(directory, type(source.model).__name__, dtype_name(source.dtype), report)

    sink.finish(extras)
    return report
