"""Decompose one block's targets with their statistics and swap LowRankLinear in."""

from __future__ import annotations

import time

import torch

from .. import rank
from ..dtypes import to_storage
from ..methods import compensated
from ..nn import build, effective_weight, stored_bits
from ..report import ModuleReport, Report
from .quantize import layer_spec, make_layer, quantized_base
from .walk import Target


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


def apply_block(targets: list[Target], stats: dict, cfg, method, report: Report, owned: bool = False,
                group=None, owner_of: dict[str, int] | None = None) -> None:
    """Decompose a block's targets and swap LowRankLinear in; the modules' reports are added
    to `report` in target order (apply_blocks with one block)."""
    apply_blocks([(targets, stats)], cfg, method, report, owned, group, owner_of)


def apply_blocks(parts: list[tuple[list[Target], dict]], cfg, method, report: Report, owned: bool = False,
                 group=None, owner_of: dict[str, int] | None = None) -> None:
    """Decompose the (targets, statistics) of one or more blocks and swap LowRankLinear in. With
    a distributed `group`, each rank first decomposes every target `owner_of` gives it (their
    statistics are on it), across all the blocks at once, then every owner broadcasts its
    stored factors and every rank swaps them in (pipeline/group.py)."""
    if group is None or not group.distributed:
        for targets, stats in parts:
            report.modules.extend(_decompose_and_swap(targets, stats, cfg, method, owned))
        return
    entries: list[ModuleReport] = []
    mine = [[t for t in targets if owner_of[t.name] == group.rank] for targets, _ in parts]
    names = [t.name for ts in mine for t in ts]
    with group.agree(f"decomposing {', '.join(names[:3]) + (' ...' if len(names) > 3 else '') or 'nothing'}"):
        for ts, (_, stats) in zip(mine, parts):
            entries += _decompose_and_swap(ts, stats, cfg, method, owned)
    for targets, _ in parts:
        for t in targets:
            _share_factors(t, owner_of[t.name], group, cfg)
    by_name = {e.name: e for part in group.gather_objects(entries) for e in part}
    report.modules.extend(by_name[t.name] for targets, _ in parts for t in targets)


def _share_factors(t: Target, src: int, group, cfg) -> None:
    """The owner's stored layer (factors, codes, scales) to every rank; the others build an
    empty one from the layer's spec and receive each of its tensors."""
    if src == group.rank:
        for tensor in getattr(t.parent, t.attr).state_dict().values():
            group.broadcast_(tensor, src)
        return
    w = t.module.weight
    new = build(layer_spec(t.shape, t.ratio, t.module.bias is not None, cfg), w.dtype, w.device)
    with torch.no_grad():
        for tensor in new.state_dict().values():
            group.broadcast_(tensor, src)
    setattr(t.parent, t.attr, new)
    t.module = None


def _prepare(targets, stats: dict, cfg, method, owned: bool):
    """(jobs (W, prepared weighting, rank) per target, each target's statistics key, the prepared
    weightings, the compensated objective's maps), one weighting per shared input."""
    prepared: dict[str, object] = {}
    maps: dict[str, tuple] = {}  # compensated objective: leader -> (T = C·G̃⁻¹, notes)
    jobs, keys, bases = [], [], []
    for t in targets:
        st = stats.get(t.name, {})
        key = st.get("leader", t.name)
        if key not in prepared:
            prepared[key] = method.prepare(st, cfg)
            if cfg.objective.kind == "compensated":
                maps[key] = compensated.target_map(st["gram"], st["cross"], cfg.calibration.jitter, cfg.objective.compensation)
                if owned:
                    st.pop("cross")
            if owned and st.get("gram") is not None:
                st["gram"] = st["gram"].float()  # what _out_error computes with anyway
        m, n = t.shape
        # the weight as stored: the methods widen each matrix to fp64 only when they use it, so a
        # block's fp64 copies are not all alive at once (Qwen2.5-0.5B: 120 MB less per block)
        W = t.module.weight.detach()
        base = quantized_base(W, cfg, t.name, st.get("gram"))
        if key in maps:  # fit W* = W·C·G̃⁻¹ under the G̃ whitening (methods/compensated.py)
            W = compensated.compensated_weight(W, maps[key][0])
        if base is not None:  # the pair fits the base's error
            W = W.double() - base.dequantize(torch.float64)
        jobs.append((W, prepared[key], rank.rank_for_ratio(m, n, t.ratio)))
        keys.append(key)
        bases.append(base)
    return jobs, keys, prepared, maps, bases


def _decompose_and_swap(targets: list[Target], stats: dict, cfg, method, owned: bool) -> list[ModuleReport]:
    """Decompose targets with their (shared) prepared statistics, all at once so that
    same-shaped SVDs share one batched call, and swap them in. `owned`: the statistics
    are this call's to change (the block loop's, not a caller's): each fp64 Gram is replaced
    by the fp32 copy the reported error uses as soon as its weighting is prepared, and each
    weighting goes once the SVDs are done (Qwen2.5-0.5B's down_proj: 189 MB of Gram and
    189 MB of whitening factor fewer at the block's peak)."""
    out: list[ModuleReport] = []
    if not targets:
        return out
    t0 = time.perf_counter()
    jobs, keys, prepared, maps, bases = _prepare(targets, stats, cfg, method, owned)
    results = method.decompose_many(jobs, cfg)
    rounds = _alternate_base(targets, jobs, results, bases, stats, cfg, method)
    notes = {key: {**_notes(prep), **(maps[key][1] if key in maps else {})} for key, prep in prepared.items()}
    maps = None
    fitted = [W for W, _, _ in jobs] if cfg.output.factor_bits < 16 else [None] * len(jobs)
    jobs = [(t.module.weight.detach(), None, k) for t, (_, _, k) in zip(targets, jobs)]  # weightings done
    prepared = None
    shared_s = (time.perf_counter() - t0) / max(len(targets), 1)  # batched: split evenly
    for i, t in enumerate(targets):
        t0 = time.perf_counter()
        (W, _, k), (A, B) = jobs[i], results[i]
        W = W.double()
        jobs[i] = results[i] = None  # let this module's fp64 copies go once it is swapped in
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise FloatingPointError(f"{t.name}: {cfg.method} produced non-finite factors at rank {k}")
        dtype = t.module.weight.dtype
        A, B, balanced = to_storage(A, B, dtype, t.name,
                                    float((A @ B).abs().max()) if dtype == torch.float16 else None)
        gram = stats.get(t.name, {}).get("gram")
        spec = layer_spec(t.shape, t.ratio, t.module.bias is not None, cfg)
        new = make_layer(spec, A, B, bases[i], fitted[i], gram, t.module.bias, dtype, t.name)
        fitted[i] = bases[i] = None
        D = effective_weight(new).sub_(W).neg_()  # W - the applied weight (one m x n fp64 buffer)
        m, n = t.shape
        bias = 0 if t.module.bias is None else m
        setattr(t.parent, t.attr, new)
        t.module = None  # the target list outlives this call: let the dense weight go now
        extra = {"balanced_split": True} if balanced else {}
        if i in rounds:
            extra["base_round"] = rounds[i]
        if "factor_bits" in spec:
            extra["bits_per_weight"] = stored_bits(new) / (m * n)
        out.append(ModuleReport(
            t.name, (m, n), k, m * n + bias, rank.lowrank_params(m, n, k) + bias,
            float(D.norm() / W.norm()), _out_error(W, D, gram), {**notes[keys[i]], **extra},
            shared_s + time.perf_counter() - t0))
    return out


def _alternate_base(targets, jobs: list, results: list, bases: list, stats: dict, cfg, method) -> dict[int, int]:
    """CALDERA's alternation (Saha et al., 2024) for `base_rounds` > 1: the base is rounded again
    to what the pair leaves, Q = round(W - A·B), and the pair refitted to W - deq(Q) by the
    method's own weighting, round after round. Rounding is not a least-squares step on the
    whitened objective, so a round can be worse: per target the round whose ‖(W - deq(Q) - A·B)·Xᵀ‖
    is lowest is kept (the Gram's output error; the plain norm without a Gram). Updates jobs
    (the matrix the pair fits), results and bases in place; returns {target index: kept round}."""
    idx = [i for i, b in enumerate(bases) if b is not None]
    if cfg.output.base_rounds < 2 or not idx:
        return {}
    W0 = {i: targets[i].module.weight.detach().double() for i in idx}
    gram = {i: stats.get(targets[i].name, {}).get("gram") for i in idx}

    def error(i, base, pair) -> float:
        D = W0[i] - base.dequantize(torch.float64) - pair[0].double() @ pair[1].double()
        e = _out_error(W0[i], D, gram[i])
        return float(D.norm()) if e is None else e

    best = {i: (error(i, bases[i], results[i]), 1, bases[i], results[i]) for i in idx}
    last = {i: results[i] for i in idx}
    for r in range(2, cfg.output.base_rounds + 1):
        new_bases = {i: quantized_base(W0[i] - last[i][0].double() @ last[i][1].double(), cfg, targets[i].name,
                                       gram[i]) for i in idx}
        fits = method.decompose_many([(W0[i] - new_bases[i].dequantize(torch.float64), jobs[i][1], jobs[i][2])
                                      for i in idx], cfg)
        for i, pair in zip(idx, fits):
            last[i] = pair
            e = error(i, new_bases[i], pair)
            if e < best[i][0]:
                best[i] = (e, r, new_bases[i], pair)
    for i in idx:
        _, _, bases[i], results[i] = best[i]
        jobs[i] = (W0[i] - bases[i].dequantize(torch.float64), jobs[i][1], jobs[i][2])
    return {i: best[i][1] for i in idx}
