"""What compress() did, per module and in total: ranks, parameters, errors, paths, times."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ModuleReport:
    name: str
    shape: tuple[int, int]
    rank: int
    params_before: int
    params_after: int
    rel_error: float                  # ‖W − AB‖_F / ‖W‖_F
    out_rel_error: float | None       # ‖(W − AB)Xᵀ‖_F / ‖WXᵀ‖_F on calibration data, if a Gram exists
    notes: dict = field(default_factory=dict)   # whitening path, dead channels, ...
    seconds: float = 0.0


@dataclass
class Report:
    method: str
    config: dict
    modules: list[ModuleReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    dense_target_params: int = 0      # targeted modules the config left dense (e.g. ResSVD's first blocks)
    dense_target_weights: int = 0     # their weights alone (no biases): what bits_per_weight counts at the dtype
    seconds_stats: float = 0.0
    seconds_decompose: float = 0.0
    seconds_refine: float = 0.0       # block-wise refinement of the factors (refine_epochs > 0)
    seconds_total: float = 0.0
    seconds_comm: float = 0.0         # distributed: in collectives (waiting for other ranks included)
    allocation: dict | None = None    # sensitivity allocation: ratios per module, trial time, cache hit
    dtype: str = ""                   # the model's dtype (factors are stored in it)
    calibration: dict = field(default_factory=dict)  # windows, seqlen, source, bos convention
    distributed: dict | None = None   # world size, backend, seconds and bytes communicated (rank's own)
    refinement: list = field(default_factory=list)  # per refined block: epochs kept, held-out MSE, seconds
    warnings: list = field(default_factory=list)    # said before the first forward (e.g. too little calibration)

    @property
    def target_params_before(self) -> int:
        """All targeted parameters, compressed or left dense."""
        return sum(m.params_before for m in self.modules) + self.dense_target_params

    @property
    def target_params_after(self) -> int:
        return sum(m.params_after for m in self.modules) + self.dense_target_params

    @property
    def ratio_targets(self) -> float:
        return self.target_params_after / max(self.target_params_before, 1)

    @property
    def ratio_model(self) -> float:
        return self.model_params_after / max(self.model_params_before, 1)

    def fallbacks(self) -> dict[str, str]:
        """Modules whose whitening needed jitter or the eigen fallback."""
        return {m.name: m.notes["whitening"] for m in self.modules
                if m.notes.get("whitening") not in (None, "cholesky")}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(target_params_before=self.target_params_before,
                 target_params_after=self.target_params_after,
                 ratio_targets=self.ratio_targets, ratio_model=self.ratio_model,
                 fallbacks=self.fallbacks())
        return d

    def bits_per_weight(self) -> float | None:
        """Stored bits over targeted weights (quantized runs: the modules report their bits; a target
        the allocation left dense counts at the model's dtype)."""
        if not self.modules or any("bits_per_weight" not in m.notes for m in self.modules):
            return None
        import torch

        weights = [m.shape[0] * m.shape[1] for m in self.modules]
        dense_bits = self.dense_target_weights * torch.finfo(getattr(torch, self.dtype or "float32")).bits
        return (sum(m.notes["bits_per_weight"] * w for m, w in zip(self.modules, weights)) + dense_bits) / \
            (sum(weights) + self.dense_target_weights)

    def summary(self, per_module: bool = False) -> str:
        lines = []
        if per_module:
            lines.append(f"{'module':45s} {'shape':>11s} {'rank':>5s} {'rel err':>8s} {'out err':>8s}  notes")
            for m in self.modules:
                out = f"{m.out_rel_error:8.4f}" if m.out_rel_error is not None else f"{'-':>8s}"
                notes = ", ".join([f"{k}={v}" for k, v in m.notes.items() if k in ("whitening", "dead_channels")] +
                                  [f"bits={m.notes['bits_per_weight']:.2f}"] * ("bits_per_weight" in m.notes))
                lines.append(f"{m.name:45s} {m.shape[0]:>5d}x{m.shape[1]:<5d} {m.rank:5d} "
                             f"{m.rel_error:8.4f} {out}  {notes}")
        fb = self.fallbacks()
        lines += [
            f"method {self.method}: {len(self.modules)} modules compressed; ratio (kept) asked "
            f"{self.config['ratio']}, achieved {self.ratio_targets:.4f} over targets "
            f"({self.target_params_after:,} / {self.target_params_before:,} params), "
            f"{self.ratio_model:.4f} over the whole model ({self.model_params_after:,} / "
            f"{self.model_params_before:,})",
            f"dtype {self.dtype or '?'}; calibration " +
            (", ".join(f"{k} {_calibration_value(k, v)}" for k, v in self.calibration.items()) or "none"),
            f"time: statistics {self.seconds_stats:.1f} s, decomposition {self.seconds_decompose:.1f} s, " +
            (f"communication {self.seconds_comm:.1f} s, " if self.distributed else "") +
            f"total {self.seconds_total:.1f} s",
            f"whitening fallbacks: {len(fb)} modules" + (f" ({sorted(set(fb.values()))})" if fb else "") +
            (" - see the warning below" if fb and self.warnings else ""),
        ]
        bits = self.bits_per_weight()
        if bits is not None:
            out = self.config.get("output", {})
            lines.append(f"bytes: {bits:.3f} bits per targeted weight on average (codes, scales and factors; "
                         f"{out.get('base_bits') or 'no'}-bit base, {out.get('factor_bits')}-bit factors" +
                         (f"; budget {out['bits']}" if out.get("bits") is not None else "") + ")")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.distributed:
            d = self.distributed
            lines.append(f"distributed: {d['world']} ranks ({d['backend']}); rank {d['rank']} ran windows "
                         f"{d['windows']}, communicated {d['comm_bytes'] / 2**20:.1f} MiB in "
                         f"{d['comm_seconds']:.1f} s (waiting for the other ranks included)")
        if self.allocation:
            a = self.allocation
            lines.append(f"{a.get('summary') or 'allocation ' + a['kind']}, total {a['seconds_total']:.1f} s "
                         f"(ranks per module: --per-module)")
        if self.refinement:
            done = [r for r in self.refinement if r["epochs"]]
            before = sum(r["heldout_before"] for r in self.refinement)
            after = sum(r["heldout_after"] for r in self.refinement)
            lines.append(f"refinement: {len(done)} of {len(self.refinement)} blocks improved, held-out "
                         f"MSE summed over blocks {before:.4g} -> {after:.4g}, {self.seconds_refine:.1f} s")
        return "\n".join(lines)


def _calibration_value(key: str, value) -> str:
    """A calibration record's value for the summary line; a mix as 'wiki 24 + notes.txt 8 windows'."""
    if key == "mix" and isinstance(value, list):
        return " + ".join(f"{m.get('source')} {m.get('windows')}" for m in value) + " windows"
    return str(value)
