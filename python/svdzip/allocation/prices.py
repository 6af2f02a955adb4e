"""What each rank of a module costs, in the unit the budget is in.

A kept ratio is a budget in parameters: rank k of an m x n module costs m+n, dense costs m·n.
A byte budget (`bits`, average stored bits per targeted weight) prices the same choices in
stored bits: rank k costs what the quantized pair grows by (codes and scales, nn.layer_bits),
and a module left dense costs m·n at the model's dtype. The two differ most there: with int8
factors a dense module costs 4x its parameters' share of an fp32 budget, and a parameter-priced
plan that leaves modules dense overshoots the byte budget (SmolLM2, --recipe best at 0.8 with
int8 factors stored 13.8 bits per weight, not 0.8 x 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import rank
from ..nn.quant_lowrank import layer_bits


def top_lowrank(m: int, n: int) -> int:
    """The highest rank a ratio below 1 reaches: where k(m+n) = mn exactly (a 32 x 32 module at
    rank 16), ratio 1 means dense, which a byte budget prices apart from the pair."""
    return max(1, (m * n - 1) // (m + n))


@dataclass(frozen=True)
class Price:
    ranks: torch.Tensor   # int64 [highest rank]: rank k's cost over rank k-1 (rank 1: its whole cost)
    dense: int            # storing the module dense

    @property
    def at_top(self) -> int:
        return int(self.ranks.sum())


def in_parameters(m: int, n: int) -> Price:
    # the highest rank a kept ratio reaches (ratio 1 = dense): ⌊mn/(m+n)⌋, at least 1
    return Price(torch.full((rank.rank_for_ratio(m, n, 1.0),), m + n, dtype=torch.int64), m * n)


def in_bits(m: int, n: int, output, float_bits: int) -> Price:
    """Stored bits of the pair at each rank under the output part (factor bits, group size)."""
    cost = [layer_bits(m, n, k, output.factor_bits, output.base_bits, output.group_size, float_bits)
            for k in range(1, top_lowrank(m, n) + 1)]
    steps = torch.tensor(cost, dtype=torch.int64)
    steps[1:] -= steps[:-1].clone()
    return Price(steps, m * n * float_bits)


def bits_budget(targets, config) -> tuple[int, dict[str, Price]]:
    """(bits the targets may store, each target's price in bits) for `config.output.bits`."""
    float_bits = torch.finfo(targets[0].module.weight.dtype).bits
    weights = sum(t.shape[0] * t.shape[1] for t in targets)
    prices = {t.name: in_bits(*t.shape, config.output, float_bits) for t in targets}
    return math.floor(config.output.bits * weights), prices
