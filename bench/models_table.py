"""Markdown tables from bench/results/models_<tag>.json (bench_models.py).

  python bench/models_table.py gemma3-270m qwen25-05b
  python bench/models_table.py smollm2_fp32 smollm2_bf16
"""

from __future__ import annotations

import json
import sys

from _timing import RESULTS


def _ppl(v: float) -> str:
    return f"{v:.3g}" if v >= 1e5 else f"{v:,.1f}" if v >= 100 else f"{v:.2f}"


def table(tag: str) -> str:
    d = json.loads((RESULTS / f"models_{tag}.json").read_text())
    sets = list(d["dense"])
    proto = d["eval_protocol"]
    head = (f"{d['model']} ({d['dtype']}, windows {'with' if proto['bos'] else 'without'} BOS, "
            f"{d['args']['n_samples']} x {d['args']['seqlen']} calibration tokens, eval windows "
            f"{proto['max_windows']}; model {d['model_mb']:.0f} MiB)")
    lines = [head, "",
             "| method | statistics | allocation | ratio (kept) | achieved (targets / model) | "
             + " | ".join(f"{s} ppl" for s in sets) + " | stats s | decomp s | total s | peak MiB above model |",
             "|---" * (9 + len(sets)) + "|",
             "| dense | – | – | 1.0 | 1.0 / 1.0 | " + " | ".join(_ppl(d["dense"][s]) for s in sets)
             + " | – | – | – | – |"]
    for r in d["rows"]:
        lines.append(f"| {r['method']} | {r['mode']} | {r['allocation']} | {r['ratio']} | "
                     f"{r['ratio_targets']:.4f} / {r['ratio_model']:.4f} | "
                     + " | ".join(_ppl(r["ppl"][s]) for s in sets)
                     + f" | {r['seconds_stats']:.0f} | {r['seconds_decompose']:.0f} | {r['seconds_total']:.0f}"
                     f" | {r['peak_mb_above_model']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(t) for t in sys.argv[1:]))
