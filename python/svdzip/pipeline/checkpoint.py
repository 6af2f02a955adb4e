"""Read tensors from a checkpoint directory's safetensors, one at a time, without loading the rest.

A directory holds either one `model.safetensors` or shards named by
`model.safetensors.index.json` (Hugging Face's layout). Every failure names the file and the
tensor: a shard the index names but that is missing, a corrupt or truncated file, a tensor that
is absent or has the wrong shape.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..dtypes import all_finite

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    pass


class Checkpoint:
    """name -> file map of a checkpoint directory; `read(name, shape, dtype, device)`."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.files: dict[str, Path] = {}   # tensor name -> file
        self._open: dict[Path, object] = {}
        index = self.path / INDEX
        if index.is_file():
            self._from_index(index)
        elif (self.path / SINGLE).is_file():
            self._from_file(self.path / SINGLE)
        else:
            raise FileNotFoundError(f"{self.path}: neither {SINGLE} nor {INDEX} found")

    def _from_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is corrupt (no readable 'weight_map'): {exc}") from exc
        for file in sorted(set(weight_map.values())):
            if not (self.path / file).is_file():
                raise FileNotFoundError(f"{index} names shard {file}, which is missing from {self.path}")
        for name, file in weight_map.items():
            self.files[name] = self.path / file
        for file in sorted(set(self.files.values())):
            self._handle(file)  # open every shard now: a damaged header fails before any work

    def _from_file(self, file: Path) -> None:
        for name in self._handle(file).keys():
            self.files[name] = file

    def _handle(self, file: Path):
        from safetensors import safe_open

        if file not in self._open:
            try:
                self._open[file] = safe_open(str(file), framework="pt", device="cpu")
            except Exception as exc:  # SafetensorError, OSError: the message says which
                raise CheckpointError(f"{file} could not be read (corrupt or truncated?): {exc}") from exc
        return self._open[file]

    def release(self) -> None:
        """Close the files (unmap them); tensors already read keep their own mapping alive,
        and pages of blocks that are done leave this process's RSS with them."""
        self._open.clear()

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str, shape=None, dtype=None, device="cpu") -> torch.Tensor:
        """The tensor `name`, checked against `shape`, cast to `dtype`, on `device`."""
        file = self.files.get(name)
        if file is None:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
        try:
            t = self._handle(file).get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{file}: tensor {name} could not be read (corrupt or truncated?): "
                                  f"{exc}") from exc
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{file}: tensor {name} has shape {tuple(t.shape)}, the model "
                                  f"expects {tuple(shape)}")
        if not all_finite(t):
            raise CheckpointError(f"{file}: tensor {name} has non-finite values")
        return t.to(device=device, dtype=dtype or t.dtype)

    def fingerprint(self) -> dict:
        """What identifies these weights cheaply: each file's name, size and header."""
        out = {}
        for file in sorted(set(self.files.values())):
            with file.open("rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                out[file.name] = [file.stat().st_size, hashlib.sha256(fh.read(min(n, 1 << 26))).hexdigest()]
        return out
