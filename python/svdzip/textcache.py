"""Disk cache of the protocol's texts and their token ids (under SVDZIP_CACHE/texts).

Extracting the Wikipedia excerpt from gensim's bz2 dump takes ~2 s and tokenizing its 555 K
calibration tokens ~1.8 s on this machine, every run, before anything else can be checked
(e.g. whether --n-samples fits the text). Both are pure functions of their inputs, so they are
kept: the articles keyed by the dump file's path, size and mtime; token ids keyed by the
SHA-256 of the text and of the tokenizer's serialised form. A damaged cache entry is ignored
and rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .paths import cache_dir


def _root() -> Path:
    return cache_dir() / "texts"


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache only costs time


def articles(source: Path, extract) -> tuple[str, ...]:
    """extract() -> the articles of dump file `source`, cached per file version."""
    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    f = _root() / f"articles-{key}.json"
    try:
        kept = json.loads(f.read_text(encoding="utf-8"))
        if kept["sha256"] == _digest(json.dumps(kept["articles"]).encode()):
            return tuple(kept["articles"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    out = tuple(extract())
    body = {"sha256": _digest(json.dumps(list(out)).encode()), "articles": list(out)}
    _write_atomic(f, lambda p: p.write_text(json.dumps(body), encoding="utf-8"))
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tokenizer_key(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # a slow tokenizer: nothing stable to key on; not cached
    return hashlib.sha256(backend.to_str().encode()).hexdigest()[:24]


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """tokenizer(text, add_special_tokens=False).input_ids as a 1-D int64 tensor, cached."""
    tkey = _tokenizer_key(tokenizer)
    if tkey is None:
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    from safetensors import safe_open
    from safetensors.torch import save_file

    f = _root() / f"ids-{tkey}-{_digest(text.encode('utf-8'))[:24]}.safetensors"
    try:
        with safe_open(str(f), framework="pt") as fh:
            ids, want = fh.get_tensor("ids"), fh.metadata()["sha256"]
        if _digest(ids.numpy().tobytes()) == want:
            return ids.long()
    except Exception:  # missing or damaged: recompute (safetensors raises its own error type)
        pass
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    small = ids.to(torch.int32).contiguous()
    meta = {"sha256": _digest(small.numpy().tobytes())}
    _write_atomic(f, lambda p: save_file({"ids": small}, str(p), metadata=meta))
    return ids
