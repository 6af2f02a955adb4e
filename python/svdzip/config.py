"""Validated method configs. `ratio` = fraction of the targeted parameters KEPT
(ASVD's convention; the papers' "20% compression" is ratio 0.8)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

FORMAT_VERSION = 1


def method_name(name: str) -> str:
    """A method as users write it -> its registered name: 'SVD-LLM', 'svd-llm' -> 'svd_llm'."""
    if not isinstance(name, str):
        raise ValueError(f"method {name!r} must be a string")
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class MethodRegistry(dict):
    """{method name: value} that finds 'SVD-LLM' / 'svd-llm' under 'svd_llm'."""

    def __getitem__(self, name):
        return super().__getitem__(method_name(name))

    def __contains__(self, name):
        return isinstance(name, str) and super().__contains__(method_name(name))

    def get(self, name, default=None):
        return self[name] if name in self else default


CONFIGS: MethodRegistry = MethodRegistry()
WEIGHTINGS = ("plain", "whitened", "whitened_eigen", "asvd")


def register(cls):
    CONFIGS[cls.method] = cls
    return cls


def _check_ratio(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{what} = {value!r} must be a number in (0, 1] (fraction of parameters kept)")


def check_fraction(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{what} = {value!r} must be in (0, 1]")


ALLOCATIONS = ("uniform", "last_blocks", "sensitivity", "loss")
LOSS_IMPORTANCES = ("probe", "block", "fisher", "relative")
OBJECTIVES = ("plain", "compensated")
REFINE_WEIGHTINGS = ("channel", "none")
_WHITENED = ("whitened", "whitened_eigen")
GRAM_PRODUCTS = ("fp64", "fp32")
from .config_quant import BASE_BITS, BASE_METHODS, FACTOR_BITS, GROUP_SIZES, check_quantization  # noqa: F401


@dataclass
class CompressConfig:
    """Options every method shares.

    ratio       kept fraction of the targeted parameters, in (0, 1]
    targets     glob patterns of Linear names inside the decoder blocks to compress
    ignore      glob patterns to leave dense (wins over targets)
    overrides   {glob pattern: ratio} for individual modules (first match wins)
    sequential  statistics block by block on the already-compressed model (else one-shot)
    last_blocks compress only the last L decoder blocks, at the per-block ratio that keeps
                the overall budget (ResSVD's scheme); None = all blocks at `ratio`
    allocation  how the budget is spread over modules: "uniform" (every module at `ratio`),
                "last_blocks" (set implicitly by last_blocks / ResSVD's last_fraction), or
                "sensitivity" (ASVD: per-module ratios from calibration-perplexity trials at
                `sensitivity_ratios`, the budget met exactly in parameters; ignores last-L)
                or "loss" (no trials: each module's whitened spectrum gives its output error at
                every rank, weighted by `loss_importance`, and the budget is solved exactly;
                allocation.allocate_loss)
    sensitivity_windows, sensitivity_seqlen
                the calibration slice the sensitivity trials are scored on
    loss_importance, loss_windows, loss_probe_windows, loss_probe_ratio
                allocation="loss": how a module's output error counts (allocation.module_weights):
                "probe" (default: each module truncated alone to `loss_probe_ratio`, its block
                rerun on the first `loss_probe_windows` windows, the block-output change scored
                with the diagonal Fisher there; that loss per unit of dropped σ² prices all its
                ranks; pipeline/spectra.py), "block" (relative error × its block's
                Fisher-measured importance), "fisher" (the mean squared loss gradient at the
                module's outputs; these three take one backward on each of the first
                `loss_windows` calibration windows) or "relative" (every module's relative
                output error alike, no backward)
    loss_min_ratio
                allocation="loss": no module is given less than this ratio (0 = rank 1);
                like the sensitivity candidates' lowest, 0.4 by default
    objective   "plain" (each layer fitted to its own inputs) or "compensated" (fitted, fed the
                compressed model's inputs, to the dense layer's outputs on the dense inputs:
                methods/compensated.py); compensated needs sequential=True and a whitened
                method (svd_llm, or nsvd / nid / ressvd with a whitened first stage)
    refine_epochs, refine_lr, refine_holdout, refine_seed
                block-wise refinement (pipeline/refine.py; needs sequential=True): after each
                block is decomposed, up to `refine_epochs` epochs of Adam (lr `refine_lr`) on its
                factors alone, matching the dense model's block outputs from the compressed
                stream; the last `refine_holdout` share of the windows is held out, training stops
                when it stops improving and the best factors are kept; 0 = off
    refine_weighting
                the refinement's error: "channel" (each hidden channel's squared error over its
                mean square in the dense outputs) or "none" (plain MSE, dominated by a few huge
                residual-stream channels)
    compensation
                β in [0, 1] of the compensated objective: target outputs W·(X̃ + β·(X − X̃)),
                β = 0 plain whitening on the compressed inputs, β = 1 the full correction
                (overfits the calibration text); default 0.25, the best measured out of
                domain on SmolLM2 (docs/findings.md, "Quality beyond the papers")
    factor_bits, base_bits, group_size
                bytes (nn/quant_lowrank.py): the pair (A, B) stored in the model's dtype
                (`factor_bits` 16) or quantized to 8 bits (per row) or 4 bits (groups of
                `group_size`), B first and A refitted to the quantized B on the Gram; `base_bits`
                > 0 stores the weight itself round-to-nearest in that many bits (groups of
                `group_size`) and fits the pair to its error W - deq(Q) (then `ratio` is the
                share of the dense parameters the correcting pair keeps)
    base_method "rtn" (round to nearest) or "gptq" (GPTQ on the layer's input Gram: each column's
                rounding error pushed onto the columns not yet rounded; nn/gptq.py)
    bits        a byte budget instead of `ratio`: average bits per targeted weight as stored
                (codes, scales, factors); the run derives the largest uniform ratio that fits it
                (pipeline/quantize.py ratio_for_bits) and plans with that
    base_from   a compressed-tensors checkpoint (llm-compressor, e.g. GPTQ) whose quantized
                weights are the base instead of svdzip's RTN (pipeline/ctbase.py); base_bits and
                group_size must be the checkpoint's
    gram_products
                precision of each calibration window's xᵀx product: "fp64" (exact to fp64) or
                "fp32" (about twice as fast on CPU; each window's product is rounded to fp32,
                relative error ~1e-7, before it joins the sum, which stays fp64)
    """

    method: ClassVar[str] = ""
    ratio: float = 0.8
    targets: tuple[str, ...] = ("*",)
    ignore: tuple[str, ...] = ()
    overrides: dict[str, float] = field(default_factory=dict)
    sequential: bool = False
    last_blocks: int | None = None
    jitter: float = 1e-6
    allocation: str = "uniform"
    sensitivity_ratios: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    sensitivity_windows: int = 2
    sensitivity_seqlen: int = 256
    gram_products: str = "fp64"
    loss_importance: str = "probe"
    loss_windows: int = 8
    loss_probe_windows: int = 2
    loss_probe_ratio: float = 0.5
    loss_min_ratio: float = 0.4
    objective: str = "plain"
    compensation: float = 0.25
    refine_epochs: int = 0
    refine_lr: float = 1e-4
    refine_holdout: float = 0.125
    refine_seed: int = 0
    refine_weighting: str = "channel"
    factor_bits: int = 16
    base_bits: int = 0
    group_size: int = 128
    base_from: str | None = None
    base_method: str = "rtn"
    bits: float | None = None

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "ratio")
        for name in ("targets", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} = {value!r} must be a list or tuple of glob patterns, not a string "
                                 f"(it would be read letter by letter): write {name}=({value!r},)")
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} = {value!r} must be a list or tuple of glob patterns")
        if not isinstance(self.overrides, dict):
            raise ValueError(f"overrides = {self.overrides!r} must be a dict {{glob pattern: ratio}}")
        self.targets, self.ignore = tuple(self.targets), tuple(self.ignore)
        for pat in (*self.targets, *self.ignore, *self.overrides):
            if not isinstance(pat, str) or not pat:
                raise ValueError(f"module pattern {pat!r} must be a non-empty string")
        for pat, r in self.overrides.items():
            _check_ratio(r, f"overrides[{pat!r}]")
        if self.last_blocks is not None and (isinstance(self.last_blocks, bool) or
                                             not isinstance(self.last_blocks, int) or self.last_blocks < 1):
            raise ValueError(f"last_blocks = {self.last_blocks!r} must be a positive integer or None")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f"jitter = {self.jitter!r} must be in [0, 1)")
        if self.gram_products not in GRAM_PRODUCTS:
            raise ValueError(f"gram_products = {self.gram_products!r} must be one of {GRAM_PRODUCTS}")
        self._check_allocation()
        self._check_objective()
        self._check_refinement()
        check_quantization(self)

    def _check_refinement(self) -> None:
        if isinstance(self.refine_epochs, bool) or not isinstance(self.refine_epochs, int) or self.refine_epochs < 0:
            raise ValueError(f"refine_epochs = {self.refine_epochs!r} must be a non-negative integer (0 = off)")
        if not isinstance(self.refine_lr, (int, float)) or not 0 < self.refine_lr < 1:
            raise ValueError(f"refine_lr = {self.refine_lr!r} must be in (0, 1)")
        if not isinstance(self.refine_holdout, (int, float)) or not 0 < self.refine_holdout < 1:
            raise ValueError(f"refine_holdout = {self.refine_holdout!r} must be in (0, 1)")
        if self.refine_weighting not in REFINE_WEIGHTINGS:
            raise ValueError(f"refine_weighting = {self.refine_weighting!r} must be one of {REFINE_WEIGHTINGS}")
        if self.refine_epochs and not self.sequential:
            raise ValueError("refine_epochs > 0 tunes each block on the compressed model's hidden states, "
                             "which only the sequential pipeline has: set sequential=True (--sequential)")

    def _check_objective(self) -> None:
        if isinstance(self.compensation, bool) or not isinstance(self.compensation, (int, float)) \
                or not 0 <= self.compensation <= 1:
            raise ValueError(f"compensation = {self.compensation!r} must be in [0, 1]")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective = {self.objective!r} must be one of {OBJECTIVES}")
        if self.objective == "plain":
            return
        if not self.sequential:
            raise ValueError("objective = 'compensated' fits each layer to the compressed model's inputs, "
                             "which only the sequential pipeline has: set sequential=True (--sequential)")
        whitened = self.method == "svd_llm" or getattr(self, "stage1", None) in _WHITENED
        if not whitened:
            raise ValueError(f"objective = 'compensated' needs a whitened method (svd_llm, or nsvd / ressvd "
                             f"with a whitened stage1); {self.method} is not")

    def _check_allocation(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation = {self.allocation!r} must be one of {ALLOCATIONS}")
        last_l = self.last_blocks is not None or getattr(self, "last_fraction", None) is not None
        if self.allocation == "uniform" and last_l:
            self.allocation = "last_blocks"
        if self.allocation == "last_blocks" and not last_l:
            raise ValueError("allocation = 'last_blocks' needs last_blocks=L (the number of final blocks)")
        self.sensitivity_ratios = tuple(sorted(self.sensitivity_ratios))
        if not self.sensitivity_ratios:
            raise ValueError("sensitivity_ratios must not be empty")
        for r in self.sensitivity_ratios:
            _check_ratio(r, "sensitivity_ratios entry")
        if self.loss_importance not in LOSS_IMPORTANCES:
            raise ValueError(f"loss_importance = {self.loss_importance!r} must be one of {LOSS_IMPORTANCES}")
        m = self.loss_min_ratio
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1:
            raise ValueError(f"loss_min_ratio = {m!r} must be in [0, 1)")
        _check_ratio(self.loss_probe_ratio, "loss_probe_ratio")
        for name in ("sensitivity_windows", "sensitivity_seqlen", "loss_windows", "loss_probe_windows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name.endswith("windows") else 2):
                raise ValueError(f"{name} = {v!r} must be a positive integer (seqlen >= 2)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"], d["ignore"] = list(self.targets), list(self.ignore)
        d["sensitivity_ratios"] = list(self.sensitivity_ratios)
        return {"version": FORMAT_VERSION, "method": self.method, **d}

    @staticmethod
    def from_dict(d: dict) -> "CompressConfig":
        d = dict(d)
        version, method = d.pop("version", None), d.pop("method", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"config version {version!r} is not supported (expected {FORMAT_VERSION})")
        if method not in CONFIGS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(CONFIGS)}")
        cls = CONFIGS[method]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {method} config fields: {sorted(unknown)}")
        return cls(**d)


# the method classes register themselves in CONFIGS as they are defined
from .config_methods import (ASVDConfig, FWSVDConfig, NIDConfig, NSVDConfig, RECIPES, ResSVDConfig,  # noqa: E402,F401
                             SVDConfig, SVDLLMConfig, recipe)
