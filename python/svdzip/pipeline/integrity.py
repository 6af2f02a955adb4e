"""Checksums of an output's tensor files, recorded when it is saved and checked before it is read.

safetensors checks a file's header, not its data: a flipped byte inside a tensor loads without
a word and gives a silently wrong model. Every svdzip output therefore records the SHA-256 of
each `*.safetensors` file in svdzip_config.json ("checksums"), and every svdzip loader checks
them before computing anything.

Why SHA-256: it is the digest `sha256sum` prints and the one Hugging Face's hub lists for LFS
files, so a user can check a file without svdzip; Python's hashlib uses the CPU's SHA
instructions (1.16 GiB/s on this 2-core machine, measured 2026-12-07; blake3 was 5.4, xxh3
12.9, blake2b 0.96). A 16 GB model costs ~14 s to check; SVDZIP_NO_VERIFY=1 (or the loaders'
verify=False, `svdzip eval --no-verify`) skips the check for users who need those seconds.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

ALGORITHM = "sha256"
SKIP_ENV = "SVDZIP_NO_VERIFY"
_CHUNK = 1 << 24


class ChecksumMismatch(ValueError):
    """A tensor file's bytes are not the ones that were saved."""


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


def bytes_digest(chunks) -> str:
    """The digest of a sequence of byte buffers, as if they were one file."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return f"{ALGORITHM}:{h.hexdigest()}"


def tensor_files(directory) -> list[Path]:
    return sorted(Path(directory).glob("*.safetensors"))


def record(directory) -> dict[str, str]:
    """{file name: digest} of every tensor file in `directory`."""
    return {p.name: file_digest(p) for p in tensor_files(directory)}


def skipped(verify: bool | None) -> bool:
    """verify=None follows SVDZIP_NO_VERIFY; True / False decide."""
    if verify is None:
        return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes")
    return not verify


_WARNED: set[str] = set()


def verify(directory, checksums: dict | None, verify: bool | None = None) -> list[str]:
    """Check every tensor file of `directory` against `checksums` (from svdzip_config.json);
    returns the files checked. A ChecksumMismatch names the first bad file. An output saved
    before checksums existed (checksums None) is warned about once and trusted."""
    directory = Path(directory)
    if skipped(verify):
        return []
    if checksums is None:
        if str(directory) not in _WARNED:
            _WARNED.add(str(directory))
            warnings.warn(f"{directory}: saved without checksums (an older svdzip); its tensor files "
                          "cannot be checked for damage. Save it again to add them.", stacklevel=3)
        return []
    present = {p.name for p in tensor_files(directory)}
    unlisted = sorted(present - set(checksums))
    if unlisted:
        raise ChecksumMismatch(f"{directory / unlisted[0]}: not listed in svdzip_config.json's checksums "
                               f"(a file added after saving?)")
    for name, want in sorted(checksums.items()):
        f = directory / name
        if not f.is_file():
            raise ChecksumMismatch(f"{f}: missing (svdzip_config.json lists it with a checksum)")
        got = file_digest(f)
        if got != want:
            raise ChecksumMismatch(f"{f}: checksum mismatch (saved {want[:23]}..., now {got[:23]}...); "
                                   f"the file is damaged: restore or recompute it")
    return sorted(checksums)
