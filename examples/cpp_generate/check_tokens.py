"""ctest: export MODEL, run svdzip_generate on it, and compare with Python generate().

Exits 0 when the C++ runner's greedy tokens equal transformers' `generate()` on the same model
(eager, no package involved), 1 otherwise (both sequences printed).
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

import svdzip  # noqa: F401 - lets from_pretrained read an svdzip directory
from svdzip.export import export_package
from svdzip.models import load_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runner", required=True, help="the svdzip_generate executable")
    p.add_argument("--model", required=True, help="a model directory (svdzip or Hugging Face)")
    p.add_argument("--work", required=True, help="a directory for the package")
    p.add_argument("--steps", type=int, default=24)
    args = p.parse_args()
    model = load_model(args.model)
    prompt = torch.arange(3, 3 + 7).remainder(model.config.vocab_size)[None]
    with torch.no_grad():
        want = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.steps,
                              min_new_tokens=args.steps, do_sample=False)[0, prompt.shape[1]:].tolist()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    package = export_package(model, work / "model.pt2", max_seq_len=prompt.shape[1] + args.steps + 8,
                             overwrite=True)
    run = subprocess.run([args.runner, str(package), str(args.steps)], input=" ".join(map(str, prompt[0].tolist())),
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        print(f"svdzip_generate failed ({run.returncode}): {run.stderr}", file=sys.stderr)
        return 1
    got = [int(t) for t in run.stdout.split()]
    print(f"python generate: {want}\nC++ runner:      {got}\n{run.stderr.strip()}")
    return 0 if got == want else 1


if __name__ == "__main__":
    sys.exit(main())
