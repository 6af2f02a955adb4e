"""Write a model as sharded safetensors, group by group (a decoder block at a time), as each
group is finished, without holding the others in memory.

safetensors' own writer needs every tensor of a file in memory at once. Our output layout is
known before the first block is compressed (every factor's rank follows from the config), so
the plan fixes each tensor's file and byte range up front: each shard is created with its
final header, and a finished block's bytes go straight to their place (pwrite + fsync). A
killed run leaves the finished blocks in place; a resumed run writes the rest. The files are
standard safetensors (the format: 8-byte header length, JSON header, raw little-endian data)
and the index is Hugging Face's `model.safetensors.index.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import INDEX

_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
DEFAULT_SHARD_SIZE = 5 * 10**9


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()


@dataclass
class Plan:
    """groups[g] = the entries written together; shards[s] = the groups stored in file s."""
    groups: list[list[Entry]]
    shard_size: int = DEFAULT_SHARD_SIZE
    stem: str = "model"   # files: model.safetensors, or model-00001-of-00003.safetensors, ...
    shards: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        if self.shard_size <= 0:
            raise ValueError(f"shard_size = {self.shard_size} must be positive (bytes)")
        self.shards, size = [[]], 0
        for g, group in enumerate(self.groups):
            nbytes = sum(e.nbytes for e in group)
            if self.shards[-1] and size + nbytes > self.shard_size:  # a group is never split
                self.shards.append([])
                size = 0
            self.shards[-1].append(g)
            size += nbytes

    def file_name(self, s: int) -> str:
        n = len(self.shards)
        return f"{self.stem}.safetensors" if n == 1 else f"{self.stem}-{s + 1:05d}-of-{n:05d}.safetensors"

    @property
    def total_size(self) -> int:
        return sum(e.nbytes for group in self.groups for e in group)


def _header(entries: list[Entry]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    meta: dict = {"__metadata__": {"format": "pt"}}
    spans, at = {}, 0
    for e in entries:
        if e.dtype not in _CODES:
            raise TypeError(f"{e.name}: dtype {e.dtype} cannot be stored in safetensors here")
        spans[e.name] = (at, at + e.nbytes)
        meta[e.name] = {"dtype": _CODES[e.dtype], "shape": list(e.shape), "data_offsets": [at, at + e.nbytes]}
        at += e.nbytes
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format allows space padding; keeps the data 8-aligned
    return len(text).to_bytes(8, "little") + text, spans


class ShardWriter:
    """Creates the plan's files in `directory` (or reopens them to resume) and writes groups."""

    def __init__(self, directory, plan: Plan, resume: bool = False) -> None:
        self.dir, self.plan = Path(directory), plan
        self.where: dict[str, tuple[Path, int, Entry]] = {}  # name -> (file, byte offset, entry)
        for s, groups in enumerate(plan.shards):
            entries = [e for g in groups for e in plan.groups[g]]
            header, spans = _header(entries)
            file = self.dir / plan.file_name(s)
            for e in entries:
                self.where[e.name] = (file, len(header) + spans[e.name][0], e)
            if resume and file.is_file() and file.stat().st_size == len(header) + sum(e.nbytes for e in entries):
                with file.open("rb") as fh:
                    if fh.read(len(header)) == header:
                        continue
                raise ValueError(f"{file}: header differs from this run's plan; cannot resume into it")
            with file.open("wb") as fh:
                fh.write(header)
                fh.truncate(len(header) + sum(e.nbytes for e in entries))  # sparse until written

    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> str:
        """Write group `group`: exactly its planned tensors, shapes and dtypes, then fsync.
        Returns the digest of the bytes written (integrity.bytes_digest, in plan order)."""
        planned = {e.name: e for e in self.plan.groups[group]}
        if set(tensors) != set(planned):
            extra, missing = sorted(set(tensors) - set(planned)), sorted(set(planned) - set(tensors))
            raise ValueError(f"output group {group} does not match the plan: unexpected {extra[:4]}, "
                             f"missing {missing[:4]}")
        fds: dict[Path, int] = {}
        digest = hashlib.sha256()
        try:
            for e in self.plan.groups[group]:
                t = tensors[e.name]
                if tuple(t.shape) != e.shape or t.dtype != e.dtype:
                    raise ValueError(f"{e.name}: {tuple(t.shape)} {t.dtype} does not match the planned "
                                     f"{e.shape} {e.dtype} (did a rank change?)")
                file, offset, _ = self.where[e.name]
                if file not in fds:
                    fds[file] = os.open(file, os.O_WRONLY)
                data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
                digest.update(memoryview(data))
                _pwrite_all(fds[file], data, offset)
            for fd in fds.values():
                os.fsync(fd)  # on disk before the resume state says this group is done
        finally:
            for fd in fds.values():
                os.close(fd)
        return f"sha256:{digest.hexdigest()}"

    def digest(self, group: int) -> str:
        """The digest of group `group`'s bytes as they are on disk now (what write returned
        when they were written, unless something damaged them)."""
        digest = hashlib.sha256()
        for e in self.plan.groups[group]:
            file, offset, _ = self.where[e.name]
            with file.open("rb") as fh:
                fh.seek(offset)
                left = e.nbytes
                while left:
                    chunk = fh.read(min(left, 1 << 24))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
        return f"sha256:{digest.hexdigest()}"

    def write_index(self) -> None:
        """model.safetensors.index.json when there are several shards (HF's layout)."""
        if len(self.plan.shards) == 1:
            return
        weight_map = {name: file.name for name, (file, _, _) in self.where.items()}
        body = {"metadata": {"total_size": self.plan.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / INDEX).write_text(json.dumps(body, indent=1))


def _pwrite_all(fd: int, data, offset: int) -> None:
    """pwrite may write less than asked (Linux caps one call near 2 GiB): loop until done."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def group_entries(tensors: dict[str, torch.Tensor]) -> list[Entry]:
    return [Entry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
