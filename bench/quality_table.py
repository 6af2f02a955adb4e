"""Render bench/results/quality_*.json as one markdown table (what the README shows).

  python bench/quality_table.py [files...]     # default: every bench/results/quality_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["svd", "fwsvd", "asvd", "svd_llm", "nsvd", "ressvd"]


def fmt(v: float) -> str:
    return f"{v:,.1f}" if v < 1e5 else f"{v:.2e}"


def main(paths: list[str]) -> None:
    files = [Path(p) for p in paths] or sorted(RESULTS.glob("quality_*.json"))
    rows, dense = [], None
    for f in files:
        d = json.loads(f.read_text())
        dense = dense or d["dense"]
        rows += [(r, f.name) for r in d["rows"]]
    rows.sort(key=lambda rf: (rf[0]["mode"], ORDER.index(rf[0]["method"]), -rf[0]["ratio"],
                              rf[0].get("gram_products", "fp64") != "fp64"))
    print("| method | statistics | ratio (kept) | achieved (targets / model) | wiki ppl | ptb ppl | stats s | decomp s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| dense | – | 1.0 | 1.0 / 1.0 | {dense['wiki']:.2f} | {dense['ptb']:.2f} | – | – |")
    for r, _ in rows:
        gram = r.get("gram_products", "fp64")
        mode = r["mode"] + (f", {gram} Gram products" if gram != "fp64" else "")
        print(f"| {r['method']} | {mode} | {r['ratio']} | {r['ratio_targets']:.4f} / {r['ratio_model']:.4f} "
              f"| {fmt(r['ppl']['wiki'])} | {fmt(r['ppl']['ptb'])} | {r['seconds_stats']:.0f} | {r['seconds_decompose']:.0f} |")
    print(f"\nsources: {', '.join(f.name for f in files)}")


if __name__ == "__main__":
    main(sys.argv[1:])
