"""Find decoder blocks and the Linear layers to compress through the model's own structure
(`_no_split_modules`, the largest ModuleList), never through architecture-specific names; and
visit them: `visit` / `visit_windows` are the one block loop every pass runs on (the block
loop proper, the Fisher forward and backward, the sensitivity sweeps, the spectra and probes),
so onloading and offloading a block is written once."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from torch import nn
from tqdm.auto import tqdm

from .. import rank


@dataclass
class Target:
    name: str              # full module name, e.g. model.layers.3.self_attn.q_proj
    block: int             # index of its decoder block
    parent: nn.Module
    attr: str
    module: nn.Linear | None  # the dense Linear; None once compress has replaced it
    ratio: float           # kept fraction for this module
    shape: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(self.module.weight.shape)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks: the longest ModuleList of `_no_split_modules`
    classes (any longest ModuleList if the model declares none)."""
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    preferred = [m for m in lists if type(m[0]).__name__ in block_names]
    pool = preferred or lists
    if not pool:
        raise ValueError(f"{type(model).__name__}: no nn.ModuleList of decoder blocks found")
    return max(pool, key=len)


def find_targets(model: nn.Module, cfg, dense: list | None = None,
                 planned: dict[str, float] | None = None) -> tuple[nn.ModuleList, list[Target]]:
    """Linear modules inside the decoder blocks that match cfg.targets and not cfg.ignore,
    each with its kept ratio: `planned[name]` where an allocation strategy decided it, else the
    config's (rank.module_ratio). Matching modules left dense (ratio 1, blocks before the last
    L) are omitted, and appended to `dense` when a list is given."""
    layers = decoder_layers(model)
    block_of = {id(layer): i for i, layer in enumerate(layers)}
    names = {id(m): n for n, m in model.named_modules()}
    _check_patterns(cfg, [names[id(m)] for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)])
    out = []
    for layer in layers:
        i = block_of[id(layer)]
        for parent in layer.modules():
            for attr, child in parent.named_children():
                if not isinstance(child, nn.Linear):
                    continue
                name = names[id(child)]
                if not rank.match(name, cfg.targets) or rank.match(name, cfg.ignore):
                    continue
                r = planned[name] if planned and name in planned else rank.module_ratio(name, i, len(layers), cfg)
                r = None if r is not None and r >= 1 else r
                if r is not None:
                    out.append(Target(name, i, parent, attr, child, r))
                elif dense is not None:
                    dense.append(child)
    if not out:
        raise ValueError(f"no Linear layer in the decoder blocks matches targets={list(cfg.targets)} "
                         f"ignore={list(cfg.ignore)} with a ratio below 1")
    return layers, out


def _check_patterns(cfg, linears: list[str]) -> None:
    """Every targets / ignore / overrides pattern matches some Linear in the decoder blocks: a
    misspelled pattern would otherwise be ignored and the wrong layers compressed."""
    for field_name, patterns in (("targets", cfg.targets), ("ignore", cfg.ignore), ("overrides", list(cfg.overrides))):
        for pat in patterns:
            if not rank.match_any(pat, linears):
                example = linears[0] if linears else "none"
                raise ValueError(f"{field_name} pattern {pat!r} matches no Linear inside the decoder blocks "
                                 f"(names look like {example!r}; embeddings and lm_head are never compressed)")


def by_block(targets: list[Target]) -> dict[int, list[Target]]:
    """{block index: its targets}, in the targets' order."""
    out: dict[int, list[Target]] = {}
    for t in targets:
        out.setdefault(t.block, []).append(t)
    return out


@contextlib.contextmanager
def swapped_forwards(layers, make):
    """Each layer's `forward` replaced by `make(layer)` as an instance attribute (hooks still
    run) for the duration; a forward already set on the instance (e.g. accelerate's wrapper)
    is put back afterwards."""
    own = [layer.__dict__.get("forward") for layer in layers]
    try:
        for layer in layers:
            layer.forward = make(layer)
        yield
    finally:
        for layer, fwd in zip(layers, own):
            if fwd is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = fwd


def visit(source, order: Iterable[int], desc: str | None = None, progress: bool = True,
          **bar) -> Iterator[tuple[int, nn.Module]]:
    """The one block loop: (i, block i) for each i in `order`, the block onloaded from the
    `source` (pipeline/source.py) before the caller's body runs and offloaded after it, also
    when the body leaves the loop early or raises (an out-of-core run never holds a block it
    is done with). A progress bar named `desc` (none without one; `bar`: tqdm's options)."""
    steps = tqdm(order, desc=desc, disable=not progress, **bar) if desc else order
    for i in steps:
        layer = source.onload(i)
        try:
            yield i, layer
        finally:
            source.offload(i)


def visit_windows(source, spans: Iterable[range], bar=None) -> Iterator[tuple[range, dict[int, nn.Module]]]:
    """`visit` a window of blocks at a time: (span, {i: block i}) with every block of the span
    onloaded, all offloaded after the body (`bar` updated once per block)."""
    for span in spans:
        layers: dict[int, nn.Module] = {}
        try:
            for i in span:
                layers[i] = source.onload(i)
            yield span, layers
        finally:
            for i in layers:
                source.offload(i)
                if bar is not None:
                    bar.update()
