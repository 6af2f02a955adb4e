"""The method configs (one dataclass per method, registered by name in config.CONFIGS) and the
named recipes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import CONFIGS, FLAT, PARTS, WEIGHTINGS, WHITENED, CompressConfig, check_number, own_fields, register
from .config_parts import option


@register
@dataclass
class SVDConfig(CompressConfig):
    """Plain truncated SVD of W (data-free baseline)."""

    method: ClassVar[str] = "svd"


@register
@dataclass
class FWSVDConfig(CompressConfig):
    """Fisher-weighted SVD: rows (outputs) weighted by √(Σ grad²) of the LM loss."""

    method: ClassVar[str] = "fwsvd"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration.sequential:
            raise ValueError("fwsvd needs gradients of the whole model's loss: sequential=True "
                             "is not supported, use one-shot statistics")


@register
@dataclass
class ASVDConfig(CompressConfig):
    """ASVD: W·diag(s)^alpha with s = mean|x| (or max|x|) per input channel."""

    method: ClassVar[str] = "asvd"
    alpha: float = option(0.5, "exponent of the channel scaling")
    stat: str = option("mean", "channel statistic", choices=("mean", "max"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 2:
            raise ValueError(f"alpha = {self.alpha!r} must be in [0, 2]")
        if self.stat not in ("mean", "max"):
            raise ValueError(f"stat = {self.stat!r} must be 'mean' or 'max'")


@register
@dataclass
class SVDLLMConfig(CompressConfig):
    """SVD-LLM: whitening by the Cholesky factor of the input Gram (optimal ‖(W−Ŵ)X‖)."""

    method: ClassVar[str] = "svd_llm"

    @property
    def whitened(self) -> bool:
        return True


@dataclass
class _TwoStageConfig(CompressConfig):
    """Two stages: rank k1 under `stage1` weighting, then the residual at k − k1 under `stage2`.
    stage1 None = the method's own whitening (`stage1_weighting`)."""

    first_fraction: float = option(0.95, "share of the rank in stage 1")
    stage1: str | None = option(None, "weighting of stage 1 (default: whitened, eigen-whitened for variant II)",
                                choices=WEIGHTINGS, kind=str)
    stage2: str = option("plain", "weighting of stage 2", choices=WEIGHTINGS)

    def __post_init__(self) -> None:
        check_number(self.first_fraction, "first_fraction", 0, 1, lo_open=True)
        for name in ("stage1", "stage2"):
            value = getattr(self, name)
            if not (value is None and name == "stage1") and value not in WEIGHTINGS:
                raise ValueError(f"{name} = {value!r} must be one of {WEIGHTINGS}")
        super().__post_init__()

    @property
    def stage1_weighting(self) -> str:
        return self.stage1 or "whitened"

    @property
    def whitened(self) -> bool:
        return self.stage1_weighting in WHITENED


@register
@dataclass
class NSVDConfig(_TwoStageConfig):
    """NSVD: nested decomposition. variant 'I' whitens stage 1 by Cholesky, 'II' by the eigen
    factor of the Gram; stage 2 truncates the residual under `stage2` weighting (default
    "asvd", ASVD's mean|x| channel scale: better than the paper's plain SVD on every text and
    first fraction measured at ratio 0.8, docs/findings.md "When does NSVD help?"). k1 = round(first_fraction·k)."""

    method: ClassVar[str] = "nsvd"
    stage2: str = "asvd"
    variant: str = option("I", "Cholesky (I) or eigen (II) stage 1", choices=("I", "II"))

    def __post_init__(self) -> None:
        if self.variant not in ("I", "II"):
            raise ValueError(f"variant = {self.variant!r} must be 'I' or 'II'")
        if self.variant == "II" and self.stage1 == "whitened":
            raise ValueError("variant = 'II' whitens stage 1 by the Gram's eigen factor; stage1 = 'whitened' "
                             "(Cholesky) is variant 'I': give one of them")
        super().__post_init__()

    @property
    def stage1_weighting(self) -> str:
        """Variant I whitens by Cholesky, II by the eigen factor, unless stage1 names another weighting."""
        return self.stage1 or ("whitened_eigen" if self.variant == "II" else "whitened")


@register
@dataclass
class NIDConfig(NSVDConfig):
    """NID: NSVD's nested scheme with an interpolative decomposition (columns of the weighted
    matrix chosen by column-pivoted QR, and the coefficients) in each stage; variant 'I'
    (Cholesky) or 'II' (eigen factor) for stage 1, as for NSVD."""

    method: ClassVar[str] = "nid"
    stage2: str = "plain"  # what the sweep measured (docs/findings.md "When does NSVD help?")


@register
@dataclass
class ResSVDConfig(_TwoStageConfig):
    """ResSVD: residual compensation (stage 1 at r1 = round(first_fraction·r), the residual at
    r − r1), applied to the last L blocks only (default: the last 3/4 of them)."""

    method: ClassVar[str] = "ressvd"
    first_fraction: float = 0.9
    last_fraction: float = option(0.75, "fraction of blocks compressed (from the end)")

    def __post_init__(self) -> None:
        check_number(self.last_fraction, "last_fraction", 0, 1, lo_open=True)
        super().__post_init__()

    @property
    def places_last_blocks(self) -> bool:
        return True

    def last_blocks_for(self, n_blocks: int) -> int:
        given = self.allocation.last_blocks
        return given if given is not None else max(1, round(self.last_fraction * n_blocks))


# Named recipes: the options a user would otherwise have to know to combine (docs/usage.md "Recipes").
# "best": the highest-quality combination measured on SmolLM2 (bench/bench_recipes.py) that
# still compresses it in about 5 minutes on 2 CPU cores.
RECIPES: dict[str, dict[str, Any]] = {
    # measured best on SmolLM2 at 0.8 and 0.6 in and out of domain (docs/findings.md, "Quality beyond the
    # papers"): nsvd (f = 0.95, stage 2 under ASVD's channel scale) beat svd_llm on wiki, ptb, code, bg;
    # the loss allocation priced by block-output probes beat the block importance and sensitivity trials
    "best": {"method": "nsvd", "first_fraction": 0.95, "stage2": "asvd", "sequential": True,
             "objective": "compensated", "compensation": 0.25, "allocation": "loss", "loss_importance": "probe"},
}


def build_config(method: str | None = None, recipe: str | None = None, **options) -> CompressConfig:
    """A config from flat options (the CLI flags' names: ratio=0.6, sequential=True,
    allocation="loss", refine_epochs=2, factor_bits=8, stage2="asvd"), on top of a named recipe
    if given: the one place options are merged. `method` defaults to the recipe's, else nsvd;
    a method other than the recipe's drops the recipe's options that method lacks."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    merged = dict(RECIPES[recipe]) if recipe is not None else {}
    method = method or options.pop("method", None) or merged.get("method", "nsvd")
    merged.pop("method", None)
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(CONFIGS)}")
    cls = CONFIGS[method]
    own, top = set(own_fields(cls)), {"ratio", "targets", "ignore", "overrides"}
    merged = {k: v for k, v in merged.items() if k in own or k in top or k in FLAT}  # recipe's other method's
    merged.update(options)
    unknown = sorted(set(merged) - own - top - set(FLAT))
    if unknown:
        raise ValueError(f"unknown {method} option(s): {', '.join(unknown)}")
    parts: dict[str, dict] = {name: {} for name in PARTS}
    for key in [k for k in merged if k in FLAT]:
        part, name = FLAT[key]
        value = merged.pop(key)
        parts[part][name] = tuple(value) if isinstance(value, list) else value
    return cls(**merged, **{name: PARTS[name](**kw) for name, kw in parts.items()})


def recipe(name: str, **overrides) -> CompressConfig:
    """The config of a named recipe (RECIPES), any option overridden: recipe("best", ratio=0.6);
    with method= another method, the recipe's options that method lacks are dropped."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return build_config(recipe=name, **overrides)
