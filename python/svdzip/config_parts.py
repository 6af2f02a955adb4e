"""The feature parts of a CompressConfig: calibration, allocation, objective, refinement, output.

Each part is a frozen dataclass that checks its own fields and raises; none rewrites what it
was given. Checks that span two parts (compensated objective needs sequential statistics, ...)
live in CompressConfig. Every field carries its command-line flag, help and choices in its
metadata, so `svdzip compress --help` is generated from here and cannot disagree with it; the
flag names are also the flat option names of `build_config` and of a version-1 config dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config_quant import BASE_BITS, BASE_METHODS, FACTOR_BITS, GROUP_SIZES, check_output

ALLOCATIONS = ("uniform", "last_blocks", "sensitivity", "loss")
LOSS_IMPORTANCES = ("probe", "block", "fisher", "relative")
OBJECTIVES = ("plain", "compensated")
REFINE_WEIGHTINGS = ("channel", "none")
GRAM_PRODUCTS = ("fp64", "fp32")


def option(default, help: str, *, flag: str | None = None, choices=None, kind=None, cli: bool = True,
           many: bool = False):
    """A part's field: its default, and how the CLI offers it (flag name, help, choices, type;
    `many`: one or more values; cli=False: Python only)."""
    meta = {"flag": flag, "help": help, "choices": choices, "kind": kind, "cli": cli, "many": many}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_ratio(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{what} = {value!r} must be a number in (0, 1] (fraction of parameters kept)")


def check_int(value: Any, what: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(least, f"an integer >= {least}")
        raise ValueError(f"{what} = {value!r} must be {kind}")


def check_number(value: Any, what: str, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi))
    if bad:
        raise ValueError(f"{what} = {value!r} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def check_choice(value: Any, what: str, choices) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{what} = {value!r} must be one of {tuple(choices)}")


@dataclass(frozen=True)
class Calibration:
    """How the statistics are gathered."""

    sequential: bool = option(False, "statistics block by block on the already-compressed model (else one-shot)")
    jitter: float = option(1e-6, "relative diagonal jitter added to a Gram that is not positive definite",
                           cli=False)
    gram_products: str = option("fp64", "precision of each window's Gram product (the sum is fp64 either way; "
                                "fp32 ~2x faster on CPU)", choices=GRAM_PRODUCTS)

    def __post_init__(self) -> None:
        if not isinstance(self.sequential, bool):
            raise ValueError(f"sequential = {self.sequential!r} must be True or False")
        check_number(self.jitter, "jitter", 0, 1, hi_open=True)
        check_choice(self.gram_products, "gram_products", GRAM_PRODUCTS)


@dataclass(frozen=True)
class Allocation:
    """How the parameter budget is spread over the modules (allocation/: one strategy per file)."""

    strategy: str | None = option(None, "per-module ratios: uniform, last_blocks (the default with --last-blocks), "
                                  "sensitivity (ASVD trials, cached in $SVDZIP_CACHE/sensitivity) or loss (no "
                                  "trials: whitened spectra priced by the loss, budget solved exactly)",
                                  flag="allocation", choices=ALLOCATIONS, kind=str)
    last_blocks: int | None = option(None, "compress only the last L blocks, at the ratio that keeps the budget",
                                     kind=int)
    sensitivity_ratios: tuple[float, ...] = option((0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                                   "candidate ratios of the sensitivity trials, increasing",
                                                   kind=float, many=True)
    sensitivity_windows: int = option(2, "calibration windows the trials are scored on")
    sensitivity_seqlen: int = option(256, "their length")
    loss_importance: str = option("probe", "--allocation loss: how a module's output error is priced (probe: each "
                                  "module truncated alone, its block's output change scored with the Fisher "
                                  "there)", choices=LOSS_IMPORTANCES)
    loss_windows: int = option(8, "--allocation loss: calibration windows of the Fisher backward")
    loss_probe_windows: int = option(2, "--loss-importance probe: windows each probe reruns its block on")
    loss_probe_ratio: float = option(0.5, "--loss-importance probe: the ratio each module is truncated to")
    loss_min_ratio: float = option(0.4, "--allocation loss: the lowest ratio any module gets (0 = rank 1)")

    def __post_init__(self) -> None:
        if self.strategy is not None:
            check_choice(self.strategy, "allocation", ALLOCATIONS)
        if self.last_blocks is not None:
            check_int(self.last_blocks, "last_blocks", 1)
        r = self.sensitivity_ratios
        if not isinstance(r, (tuple, list)) or not r:
            raise ValueError(f"sensitivity_ratios = {r!r} must not be empty (a list of ratios)")
        for x in r:
            check_ratio(x, "sensitivity_ratios entry")
        if any(a >= b for a, b in zip(r, r[1:])):
            raise ValueError(f"sensitivity_ratios = {r!r} must be increasing")
        check_choice(self.loss_importance, "loss_importance", LOSS_IMPORTANCES)
        check_number(self.loss_min_ratio, "loss_min_ratio", 0, 1, hi_open=True)
        check_ratio(self.loss_probe_ratio, "loss_probe_ratio")
        for name in ("sensitivity_windows", "loss_windows", "loss_probe_windows"):
            check_int(getattr(self, name), name, 1)
        check_int(self.sensitivity_seqlen, "sensitivity_seqlen", 2)


@dataclass(frozen=True)
class Objective:
    """What each layer's factors are fitted to."""

    kind: str = option("plain", "compensated: fit each layer, fed the compressed model's inputs, to the dense "
                       "layer's outputs (needs --sequential and a whitened method)", flag="objective",
                       choices=OBJECTIVES)
    compensation: float = option(0.25, "--objective compensated: strength beta in [0, 1]")

    def __post_init__(self) -> None:
        check_choice(self.kind, "objective", OBJECTIVES)
        check_number(self.compensation, "compensation", 0, 1)


@dataclass(frozen=True)
class Refinement:
    """Block-wise refinement of the factors after each block is decomposed (pipeline/refine.py)."""

    epochs: int = option(0, "block-wise refinement (needs --sequential): epochs of Adam on each block's factors "
                         "against the dense block's outputs (0 = off)", flag="refine_epochs")
    lr: float = option(1e-4, "refinement learning rate", flag="refine_lr")
    holdout: float = option(0.125, "share of the windows held out to stop the refinement", flag="refine_holdout",
                            cli=False)
    seed: int = option(0, "seed of the refinement's window order", flag="refine_seed", cli=False)
    weighting: str = option("channel", "refinement error: per-channel standardised (channel) or plain MSE (none)",
                            flag="refine_weighting", choices=REFINE_WEIGHTINGS)

    def __post_init__(self) -> None:
        check_int(self.epochs, "refine_epochs", 0)
        check_number(self.lr, "refine_lr", 0, 1, lo_open=True, hi_open=True)
        check_number(self.holdout, "refine_holdout", 0, 1, lo_open=True, hi_open=True)
        check_int(self.seed, "refine_seed", 0)
        check_choice(self.weighting, "refine_weighting", REFINE_WEIGHTINGS)


@dataclass(frozen=True)
class Output:
    """How the result is stored: bits of the factors, a quantized base (docs/usage.md "Bytes")."""

    factor_bits: int = option(16, "store the factors A, B in 8 bits (per row) or 4 bits (groups of --group-size), "
                              "run by torch's integer kernels; 16 = the model's dtype", choices=FACTOR_BITS)
    base_bits: int = option(0, "also store the weight itself round-to-nearest in this many bits and fit the "
                            "factors to its error (then --ratio is the share the correcting factors keep, e.g. "
                            "0.05); 0 = none", choices=BASE_BITS)
    base_method: str = option("rtn", "--base-bits: round the base to nearest (rtn) or by GPTQ on the layer's input "
                              "Gram (gptq)", choices=BASE_METHODS)
    group_size: int = option(128, "columns per quantization group below 8 bits", choices=GROUP_SIZES)
    bits: float | None = option(None, "a byte budget instead of --ratio: average bits per targeted weight as "
                                "stored (codes, scales, factors), e.g. 4.25: the largest uniform ratio that fits, or "
                                "with --allocation loss each module's ranks priced in stored bits", kind=float)
    base_rounds: int = option(1, "CALDERA: rounds of rounding the base again to what the factors leave (W - A*B) "
                              "and refitting them; each module keeps its round of lowest output error on the "
                              "calibration Gram; 1 = round once")
    base_from: str | None = option(None, "use the quantized weights of this compressed-tensors checkpoint "
                                   "(llm-compressor's GPTQ, symmetric 2-4 bit groups) as the base and fit the "
                                   "factors to its error; --base-bits and --group-size default to the "
                                   "checkpoint's", kind=str)

    def __post_init__(self) -> None:
        check_output(self)

    @property
    def quantized(self) -> bool:
        return self.factor_bits < 16 or self.base_bits > 0


PARTS: dict[str, type] = {"calibration": Calibration, "allocation": Allocation, "objective": Objective,
                          "refinement": Refinement, "output": Output}


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


# flat option name (the CLI flag without dashes) -> (part, field)
FLAT: dict[str, tuple[str, str]] = {flag_of(f): (part, f.name)
                                    for part, cls in PARTS.items() for f in dataclasses.fields(cls)}


def split_flat(options: dict) -> tuple[dict, dict[str, dict]]:
    """{flat name: value} -> (the options that are not a part's, {part: {field: value}})."""
    rest, parts = {}, {name: {} for name in PARTS}
    for key, value in options.items():
        if key in FLAT:
            part, name = FLAT[key]
            parts[part][name] = value
        else:
            rest[key] = value
    return rest, parts


def flat_of(part) -> dict:
    """A part's fields under their flat names."""
    return {flag_of(f): getattr(part, f.name) for f in dataclasses.fields(part)}
