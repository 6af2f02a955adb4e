"""Activation statistics per Linear input, through scoped forward hooks.

Modules that receive the very same input tensor in a forward pass (q/k/v; gate/up) share
one statistics dict: the first of them to run is the leader, the others point at it, so a
block holds 4 Grams, not 7. Statistics are owned here, keyed by module name, never stored
on the modules; hooks live only inside the `with` block.

gram_products="fp32" forms each window's xᵀx in fp32 (a scratch Gram per shared input) and
adds it to the fp64 sum: the GEMM runs at fp32 speed (about 2x on CPU) while the error of
the sum stays that of one window's product, not of the whole accumulation.

kind "cross" (the compensated objective): the cross-Gram C = Σ x_denseᵀ·x of each leader's
input x with the dense model's input to the same module at the same tokens, which an
InputCapture took from the dense stream's pass of this batch (`paired`, set per batch).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .. import ops


class StatsCollector:
    """with StatsCollector({name: linear}, {"gram", "abs_mean"}) as c: run forwards; c.stats."""

    def __init__(self, modules: dict[str, nn.Module], kinds, gram_dtype=torch.float64,
                 gram_products: str = "fp64"):
        if gram_products not in ("fp64", "fp32"):
            raise ValueError(f"gram_products = {gram_products!r} must be 'fp64' or 'fp32'")
        self.modules = modules
        self.kinds = set(kinds) - {"fisher"}
        self.gram_dtype = gram_dtype
        self.window_dtype = torch.float32 if gram_products == "fp32" else gram_dtype
        self.stats: dict[str, dict] = {}
        self.leader: dict[str, str] = {}
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}  # id(input) -> (input, leader)
        self._handles = []
        self.paired: dict[str, torch.Tensor] | None = None  # "cross": dense inputs of this batch
        self.listening = True  # False during a paired pass's dense side (see suspended())

    def __enter__(self) -> "StatsCollector":
        try:
            for name, mod in self.modules.items():
                self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()

    def new_pass(self) -> None:
        """Forget input identities between forward passes (keeps the ids from being reused)."""
        self._seen.clear()

    @contextlib.contextmanager
    def suspended(self):
        """Forwards inside this block add nothing (the dense side of a paired pass)."""
        self.listening = False
        try:
            yield
        finally:
            self.listening = True

    def _hook(self, name: str):
        def hook(module, args):
            if not self.listening:
                return
            x = args[0]  # identity of the very object passed (detach() would make a new one)
            seen = self._seen.get(id(x))
            if seen is not None and seen[0] is x:
                self._follow(name, seen[1])
                return
            self._seen[id(x)] = (x, name)  # holding x keeps its id unique in this pass
            self._accumulate(name, x.detach())
        return hook

    def _follow(self, name: str, leader: str) -> None:
        if self.leader.setdefault(name, leader) != leader:
            raise RuntimeError(f"{name}: shares its input with {leader} now but with "
                               f"{self.leader[name]} before; input sharing must be stable")
        self.stats[name] = self.stats[leader]

    def _accumulate(self, name: str, x: torch.Tensor) -> None:
        self.leader.setdefault(name, name)
        n = x.shape[-1]
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = self._empty(n, x.device)
        rows = x.reshape(-1, n)
        st["tokens"] += rows.shape[0]
        if "gram_window" in st:
            ops.gram_accumulate_(st["gram_window"].zero_(), rows)
            # widen through a kept buffer: a mixed-dtype `+=` makes an n x n fp64 temporary on
            # every call on CPU, and per-window temporaries fragment glibc's heap (RSS grows)
            st["gram"] += st["gram_wide"].copy_(st["gram_window"])
        elif "gram" in st:
            ops.gram_accumulate_(st["gram"], rows)
        if "cross" in st:
            dense = None if self.paired is None else self.paired.get(name)
            if dense is None or dense.numel() != x.numel():
                raise RuntimeError(f"{name}: no dense input of the same tokens for the cross-Gram "
                                   f"(got {None if dense is None else tuple(dense.shape)}, need {tuple(x.shape)})")
            ops.cross_gram_accumulate_(st["cross"], dense.reshape(-1, n), rows)
        if "abs_sum" in st:  # mean|x| and max|x| are collected together
            ops.abs_mean_accumulate_(st["abs_sum"], rows)
            ops.abs_max_accumulate_(st["abs_max"], rows)

    def _empty(self, n: int, device) -> dict:
        st: dict = {"tokens": 0}
        if "gram" in self.kinds:
            st["gram"] = torch.zeros(n, n, dtype=self.gram_dtype, device=device)
            if self.window_dtype != self.gram_dtype:
                st["gram_window"] = torch.empty(n, n, dtype=self.window_dtype, device=device)
                st["gram_wide"] = torch.empty(n, n, dtype=self.gram_dtype, device=device)
        if "cross" in self.kinds:
            st["cross"] = torch.zeros(n, n, dtype=self.gram_dtype, device=device)
        if "abs_mean" in self.kinds or "abs_max" in self.kinds:
            st["abs_sum"] = torch.zeros(n, dtype=torch.float64, device=device)
            st["abs_max"] = torch.zeros(n, dtype=torch.float64, device=device)
        return st

    def check_ran(self) -> None:
        missing = [n for n in self.modules if n not in self.stats]
        if missing:
            raise RuntimeError(f"no activations reached {missing[:5]}{'...' if len(missing) > 5 else ''}")

    def raw(self) -> dict[str, dict]:
        """The running sums by leader (what a distributed group reduces before finalize)."""
        self.check_ran()
        return {lead: self.stats[lead] for lead in dict.fromkeys(self.leader[n] for n in self.modules)}

    def finalize(self, raw: dict[str, dict | None] | None = None) -> dict[str, dict]:
        """Per module: {'gram', 'abs_mean', 'abs_max', 'tokens'}; raises naming the module
        if a statistic is non-finite (NaN/Inf activations) or the module never ran. `raw`
        (from raw(), reduced by a group): only the leaders it still holds are finalized."""
        self.check_ran()
        out, done = {}, {}
        for name in self.modules:
            lead = self.leader[name]
            if raw is not None and raw.get(lead) is None:
                continue  # another rank owns this group
            if lead not in done:
                done[lead] = self._final(lead, self.stats[lead] if raw is None else raw[lead])
            out[name] = done[lead]
        return out

    @staticmethod
    def _final(name: str, st: dict) -> dict:
        res = {"tokens": st["tokens"], "leader": name}
        for key in ("gram", "cross"):
            if key in st:
                res[key] = st[key]
        if "abs_sum" in st:
            res["abs_mean"] = st["abs_sum"] / max(st["tokens"], 1)
            res["abs_max"] = st["abs_max"]
        for key in ("gram", "cross", "abs_mean", "abs_max"):
            if key in res and not torch.isfinite(res[key]).all():
                bad = res[key][~torch.isfinite(res[key])].flatten()[0].item()
                raise FloatingPointError(f"{name}: calibration statistic '{key}' contains {bad} "
                                         "(NaN/Inf in the activations or the weights upstream)")
        return res


class InputCapture:
    """with InputCapture({name: linear}) as cap: one forward; cap.inputs = {name: its input}.
    The dense stream's side of a paired pass: what each module saw, for StatsCollector.paired."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.inputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> "InputCapture":
        self.inputs = {}
        try:
            for name, mod in self.modules.items():
                self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, args):
            self.inputs[name] = args[0].detach()
        return hook
