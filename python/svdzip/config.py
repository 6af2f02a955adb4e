"""Validated method configs. `ratio` = fraction of the targeted parameters KEPT
(ASVD's convention; the papers' "20% compression" is ratio 0.8)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

FORMAT_VERSION = 2  # 1: flat fields (read by from_dict)


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


WHITENED = ("whitened", "whitened_eigen")
from .config_parts import (ALLOCATIONS, FLAT, GRAM_PRODUCTS, LOSS_IMPORTANCES, OBJECTIVES, PARTS,  # noqa: E402,F401
                           REFINE_WEIGHTINGS, Allocation, Calibration, Objective, Output, Refinement, check_number,
                           check_ratio, flat_of)
from .config_quant import BASE_BITS, BASE_METHODS, FACTOR_BITS, GROUP_SIZES, check_output_with  # noqa: E402,F401


@dataclass
class CompressConfig:
    """What every method shares; the feature options live in five parts (config_parts.py).

    ratio       kept fraction of the targeted parameters, in (0, 1]
    targets     glob patterns of Linear names inside the decoder blocks to compress
    ignore      glob patterns to leave dense (wins over targets)
    overrides   {glob pattern: ratio} for individual modules (first match wins)
    calibration Calibration(sequential, jitter, gram_products): how statistics are gathered
    allocation  Allocation(strategy, last_blocks, sensitivity_*, loss_*): how the budget is spread
                ("uniform", "last_blocks", "sensitivity": ASVD's trials, "loss": whitened spectra
                priced by the loss; allocation/ has one file per strategy)
    objective   Objective(kind, compensation): "plain" (each layer fitted to its own inputs) or
                "compensated" (fitted, fed the compressed model's inputs, to the dense layer's
                outputs: methods/compensated.py; needs sequential statistics and a whitened method)
    refinement  Refinement(epochs, lr, holdout, seed, weighting): block-wise Adam on the factors
                against the dense block's outputs (pipeline/refine.py; needs sequential)
    output      Output(factor_bits, base_bits, base_method, group_size, bits, base_from): how the
                result is stored (quantized factors, a quantized base, a byte budget)

    `build_config(method, **flat)` builds one from flat options (`sequential=True`,
    `allocation="loss"`: the CLI's flag names); every field's meaning is in config_parts.py.
    """

    method: ClassVar[str] = ""
    ratio: float = 0.8
    targets: tuple[str, ...] = ("*",)
    ignore: tuple[str, ...] = ()
    overrides: dict[str, float] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    allocation: Allocation = field(default_factory=Allocation)
    objective: Objective = field(default_factory=Objective)
    refinement: Refinement = field(default_factory=Refinement)
    output: Output = field(default_factory=Output)

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "ratio")
        for name in ("targets", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} = {value!r} must be a list or tuple of glob patterns, not a string "
                                 f"(it would be read letter by letter): write {name}=({value!r},)")
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} = {value!r} must be a list or tuple of glob patterns")
        if not isinstance(self.overrides, dict):
            raise ValueError(f"overrides = {self.overrides!r} must be a dict {{glob pattern: ratio}}")
        for pat in (*self.targets, *self.ignore, *self.overrides):
            if not isinstance(pat, str) or not pat:
                raise ValueError(f"module pattern {pat!r} must be a non-empty string")
        for pat, r in self.overrides.items():
            check_ratio(r, f"overrides[{pat!r}]")
        for name, cls in PARTS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} = {getattr(self, name)!r} must be a svdzip.config.{cls.__name__} "
                                 f"(or give flat options to svdzip.build_config)")
        self._check_combinations()

    @property
    def places_last_blocks(self) -> bool:
        """Does the config compress only the last blocks (last_blocks, or a method's own rule)?"""
        return self.allocation.last_blocks is not None

    def last_blocks_for(self, n_blocks: int) -> int | None:
        """How many final blocks are compressed (None: all)."""
        return self.allocation.last_blocks

    @property
    def whitened(self) -> bool:
        """Is the method's weighting a whitening (what the compensated objective builds on)?"""
        return False

    @property
    def strategy(self) -> str:
        """The allocation strategy: the one named, else last_blocks where only the last blocks
        are compressed, else uniform."""
        named = self.allocation.strategy
        return named if named is not None else ("last_blocks" if self.places_last_blocks else "uniform")

    def _check_combinations(self) -> None:
        named = self.allocation.strategy
        if named == "uniform" and self.places_last_blocks:
            raise ValueError("allocation = 'uniform' compresses every block, but this config compresses only the "
                             "last blocks (last_blocks, or ResSVD's last_fraction): name 'last_blocks' or leave "
                             "allocation unset")
        if named == "last_blocks" and not self.places_last_blocks:
            raise ValueError("allocation = 'last_blocks' needs last_blocks=L (the number of final blocks)")
        if self.refinement.epochs and not self.calibration.sequential:
            raise ValueError("refine_epochs > 0 tunes each block on the compressed model's hidden states, "
                             "which only the sequential pipeline has: set sequential=True (--sequential)")
        if self.objective.kind == "compensated":
            if not self.calibration.sequential:
                raise ValueError("objective = 'compensated' fits each layer to the compressed model's inputs, "
                                 "which only the sequential pipeline has: set sequential=True (--sequential)")
            if not self.whitened:
                raise ValueError(f"objective = 'compensated' needs a whitened method (svd_llm, or nsvd / ressvd "
                                 f"with a whitened stage1); {self.method} is not")
        check_output_with(self)

    def method_options(self) -> dict:
        """The fields only this method has (nsvd's stage2, asvd's alpha)."""
        return {name: getattr(self, name) for name in own_fields(type(self))}

    def flat(self) -> dict:
        """Every option under its flat name (the CLI flags' names)."""
        out = {"method": self.method, "ratio": self.ratio, "targets": list(self.targets),
               "ignore": list(self.ignore), "overrides": dict(self.overrides), **self.method_options()}
        for name in PARTS:
            out.update(flat_of(getattr(self, name)))
        return _plain(out)

    def to_dict(self) -> dict:
        d = {"version": FORMAT_VERSION, "method": self.method, "ratio": self.ratio, "targets": list(self.targets),
             "ignore": list(self.ignore), "overrides": dict(self.overrides), **self.method_options()}
        d.update({name: dataclasses.asdict(getattr(self, name)) for name in PARTS})
        return _plain(d)

    @staticmethod
    def from_dict(d: dict) -> "CompressConfig":
        """A config from to_dict's output, or from a version-1 (flat) dict of an older svdzip."""
        d = dict(d)
        version, method = d.pop("version", None), d.pop("method", None)
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"config version {version!r} is not supported (expected 1 or {FORMAT_VERSION})")
        if method not in CONFIGS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(CONFIGS)}")
        d = {k: tuple(v) if k in ("targets", "ignore") else v for k, v in d.items()}  # JSON lists
        if version == 1:
            d.setdefault("allocation", None)  # v1 wrote the rewritten strategy; None derives it again
            if d["allocation"] in ("uniform", "last_blocks"):
                d["allocation"] = None
            return build_config(method, **d)
        cls = CONFIGS[method]
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {method} config fields: {sorted(unknown)}")
        parts = {name: PARTS[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop(name, {}).items()})
                 for name in PARTS}
        return cls(**d, **parts)


def method_option_meta(name: str) -> dict:
    """The help, choices and type of method option `name`, from the first config class that
    declares it with them (a subclass that only changes the default, NSVD's stage2, has none)."""
    for cls in CONFIGS.values():
        for klass in cls.__mro__:
            f = getattr(klass, "__dataclass_fields__", {}).get(name)
            if f is not None and f.metadata.get("help"):
                return dict(f.metadata)
    raise KeyError(f"method option {name!r} has no help in any config class (declare it with option(...))")


def own_fields(cls) -> tuple[str, ...]:
    """The dataclass fields of method config `cls` that CompressConfig does not have."""
    shared = {f.name for f in dataclasses.fields(CompressConfig)}
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in shared)


def _plain(value):
    """Tuples as lists, recursively: what JSON gives back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# the method classes register themselves in CONFIGS as they are defined
from .config_methods import (ASVDConfig, FWSVDConfig, NIDConfig, NSVDConfig, RECIPES, ResSVDConfig,  # noqa: E402,F401
                             SVDConfig, SVDLLMConfig, build_config, recipe)
