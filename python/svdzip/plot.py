"""Figures (matplotlib, PNG): quality vs ratio, singular-value spectra, per-module errors and
ranks. Each function reads plain data (bench JSON, an svdzip output dir, tensors) and writes
one PNG atomically; matplotlib is the optional extra `svdzip[plot]`."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise SystemExit("plots need matplotlib: pip install 'svdzip[plot]'") from exc
    return plt


def _save(fig, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(out)
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a bench JSON ({exc})") from exc


def quality_rows(paths) -> tuple[list[dict], dict]:
    """Rows of bench_quality JSON files (later files win on the same method/mode/ratio); a row
    measured with fp32 Gram products has mode '<mode>, fp32 Gram' so it never hides an fp64 one."""
    rows: dict[tuple, dict] = {}
    dense: dict = {}
    for p in paths:
        d = _read_json(p)
        if "rows" not in d:
            raise ValueError(f"{p}: no 'rows' (not a bench_quality.py result)")
        dense = d.get("dense", dense)
        for r in d["rows"]:
            if r.get("gram_products", "fp64") != "fp64":
                r = {**r, "mode": f"{r['mode']}, {r['gram_products']} Gram"}
            rows[(r["method"], r["mode"], r["ratio"])] = r
    return list(rows.values()), dense


def plot_quality(paths, out, dataset: str = "wiki") -> Path:
    """Perplexity vs kept ratio, one line per method (solid one-shot, dashed sequential)."""
    rows, dense = quality_rows(paths)
    rows = [r for r in rows if dataset in r["ppl"]]
    if not rows:
        raise ValueError(f"no rows with {dataset} perplexity in {[str(p) for p in paths]}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (method, mode) in sorted({(r["method"], r["mode"]) for r in rows}):
        pts = sorted((r["ratio"], r["ppl"][dataset]) for r in rows if (r["method"], r["mode"]) == (method, mode))
        ax.plot(*zip(*pts), marker="o", ls="-" if mode.startswith("oneshot") else "--",
                label=f"{method} ({mode})")
    if dataset in dense:
        ax.axhline(dense[dataset], color="k", lw=0.8, ls=":", label=f"dense {dense[dataset]:.2f}")
    ax.set(xlabel="kept ratio of targeted parameters", ylabel=f"{dataset} perplexity (log)", yscale="log",
           title=f"SmolLM2-135M: {dataset} perplexity vs ratio")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    return _save(fig, out)


def _meta(out_dir) -> dict:
    from .meta import read_meta

    return read_meta(Path(out_dir))


def plot_module_errors(out_dir, out) -> Path:
    """Per-module relative weight error and output error from an svdzip output dir's report."""
    meta = _meta(out_dir)
    mods = (meta.get("report") or {}).get("modules")
    if not mods:
        raise ValueError(f"{out_dir}: svdzip_config.json has no report (saved without one)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, len(mods) * 0.05), 4.2))
    x = range(len(mods))
    ax.plot(x, [m["rel_error"] for m in mods], ".", label="‖W−AB‖/‖W‖")
    if any(m["out_rel_error"] is not None for m in mods):
        ax.plot(x, [m["out_rel_error"] if m["out_rel_error"] is not None else float("nan") for m in mods],
                ".", label="‖(W−AB)X‖/‖WX‖ (calibration)")
    ax.set(xlabel="module (model order)", ylabel="relative error", yscale="log",
           title=f"{meta['report']['method']}: per-module error")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_ranks(out_dir, out) -> Path:
    """Kept rank as a fraction of full rank, per module, grouped by projection name."""
    meta = _meta(out_dir)
    mods = meta["modules"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    groups: dict[str, list[tuple[int, float]]] = {}
    for i, (name, spec) in enumerate(mods.items()):
        full = min(spec["in_features"], spec["out_features"])
        groups.setdefault(name.rsplit(".", 1)[-1], []).append((i, spec["rank"] / full))
    for proj, pts in groups.items():
        ax.plot(*zip(*pts), "o", ms=3, label=proj)
    ax.set(xlabel="module (model order)", ylabel="rank / min(m, n)", ylim=(0, 1.05),
           title=f"per-module ranks ({len(mods)} low-rank modules)")
    ax.legend(fontsize=7, ncol=4)
    return _save(fig, out)


def plot_spectra(spectra: dict[str, tuple], out) -> Path:
    """spectra: {layer: (singular values of W, of W·S)}; each normalised by its largest."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(spectra), figsize=(3.4 * len(spectra), 3.4), squeeze=False)
    for ax, (name, (plain, whitened)) in zip(axes[0], spectra.items()):
        ax.semilogy((plain / plain[0]).cpu(), label="W")
        ax.semilogy((whitened / whitened[0]).cpu(), label="W·S (whitened)")
        ax.set(title=name, xlabel="index", ylabel="σ / σ₁")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)
