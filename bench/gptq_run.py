"""GPTQ through llm-compressor, run in its own environment (bench/gptq_setup.sh), on the same
calibration windows as svdzip (a tensor file written by bench_bytes.py).

  bench/.venv-llmc/bin/python bench/gptq_run.py MODEL_DIR CALIB.pt OUT --bits 4 --group 128

Writes OUT/ct (llm-compressor's compressed-tensors checkpoint, what a user would bring) and
OUT/dense (a plain Hugging Face checkpoint whose targeted weights are GPTQ's dequantised
weights, so that svdzip's evaluation reads it without compressed-tensors installed), and
OUT/gptq.json (time, bits per weight from the compressed files)."""

import argparse
import json
import time
from pathlib import Path

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    ids = torch.load(args.calib)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=args.bits, type="int", symmetric=True, strategy="group", group_size=args.group))
    t0 = time.perf_counter()
    oneshot(model=model, dataset=Dataset.from_dict({"input_ids": ids.tolist()}),
            recipe=GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"]),
            max_seq_length=ids.shape[1], num_calibration_samples=ids.shape[0])
    seconds = time.perf_counter() - t0
    deq, moved = {}, 0.0
    with torch.no_grad():
        for name, m in model.named_modules():
            if getattr(m, "quantization_scheme", None) is not None and hasattr(m, "weight_scale"):
                w = fake_quantize(m.weight, m.weight_scale, getattr(m, "weight_zero_point", None),
                                  m.quantization_scheme.weights)
                moved = max(moved, float((w - m.weight).abs().max()))
                deq[name + ".weight"] = w.detach().clone()
    tok = AutoTokenizer.from_pretrained(args.model)
    model.save_pretrained(out / "ct", save_compressed=True)
    tok.save_pretrained(out / "ct")
    plain = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    missing = [n for n in deq if n not in plain.state_dict()]
    assert not missing, missing
    plain.load_state_dict(deq, strict=False)
    plain.save_pretrained(out / "dense")
    tok.save_pretrained(out / "dense")
    stored = targets = 0
    for f in sorted((out / "ct").glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for key in fh.keys():
                base = key.rsplit(".", 1)[0]
                if base + ".weight" in deq or base + ".weight_packed" in {k for k in fh.keys()}:
                    if any(key.endswith(s) for s in (".weight_packed", ".weight_scale", ".weight_zero_point",
                                                     ".weight_shape", ".weight_g_idx")):
                        t = fh.get_tensor(key)
                        stored += t.numel() * t.element_size() * (0 if key.endswith("weight_shape") else 8)
    targets = sum(t.numel() for t in deq.values())
    info = {"bits": args.bits, "group": args.group, "seconds": seconds, "modules": len(deq),
            "bits_per_weight": stored / targets, "requantize_max_change": moved}
    (out / "gptq.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
