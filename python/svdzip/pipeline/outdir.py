"""Where an output may go, and how it gets there without losing anybody's files.

Every writer of an output directory (save_compressed, save_pretrained of a compressed model,
compress_checkpoint's shards, the CLI) asks `check_output` first:

- never into, or over, the model it reads: OUT equal to the input directory, inside it, or a
  directory that contains it is refused, --overwrite or not;
- an OUT that exists and is not empty is refused unless `overwrite` is given (the user's files
  are named in the message and left alone);
- a file where a directory should go is refused.

The output is built in a staging directory beside OUT (`.OUT.saving-PID-XXXX`) and renamed into
place at the end (`replace_dir`). A staging or set-aside directory left by a killed process
(its PID no longer runs) is removed the next time anything is saved beside it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path


class OutputRefused(ValueError):
    """OUT would overwrite or swallow something that must not be touched."""


def _real(path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(out, inputs=(), overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """The output path, checked (see the module doc). `inputs`: directories the run reads (the
    model's own); they and any directory holding them are never written."""
    out_real = _real(out)
    for given in inputs:
        if not given or not Path(given).exists():
            continue
        src = _real(given)
        if _within(out_real, src) or _within(src, out_real):
            where = "is" if out_real == src else "is inside" if _within(out_real, src) else "contains"
            raise OutputRefused(f"output {out} {where} the input model directory {given}; "
                                f"choose another output directory (this is refused even with {flag})")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputRefused(f"output {out} exists and is a file, not a directory; choose another path")
    if path.is_dir() and not overwrite:
        held = sorted(p.name for p in path.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise OutputRefused(f"output directory {out} exists and is not empty ({shown}); nothing was "
                                f"written: choose a new directory, or pass {flag} to replace it")
    return path


# .OUT.saving-PID-XXXX (a directory), .OUT.old-PID, .STEM.saving-PID.pt2 (export's package file)
_STAGING = re.compile(r"\.(?P<name>.+?)\.(saving|old)-(?P<pid>\d+)([-.].*)?$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out) -> list[Path]:
    """Remove the staging / set-aside directories (and export's staging files) of OUT that a dead
    process left; returns them."""
    out = Path(out)
    gone = []
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return gone
    for p in parent.iterdir():
        m = _STAGING.match(p.name)
        if m and m["name"] == out.name and not _running(int(m["pid"])):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def staging_dir(out) -> Path:
    """A new empty directory beside OUT to build the output in (stale ones cleaned first)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.saving-{os.getpid()}-", dir=out.parent))


def replace_dir(new: Path, dest: Path, overwrite: bool = False) -> None:
    """Rename directory `new` to `dest`. An existing non-empty dest is replaced only with
    `overwrite` (it is kept until the new one is in place), else refused, `new` left as it is."""
    old = None
    if dest.exists():
        if not overwrite and (not dest.is_dir() or any(dest.iterdir())):
            raise OutputRefused(f"output {dest} appeared while this run was writing; the result is kept "
                                f"in {new} and {dest} is untouched")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
