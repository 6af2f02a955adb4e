"""What an svdzip output directory says about itself, and how it is read back.

- config.json (Hugging Face's) carries `quantization_config`: quant_method "svdzip", the format
  version, the base model type and **the rank map** (module -> rank, in/out features, bias).
  That rank map is the one source of truth: `load_compressed`, `from_pretrained` and
  `svdzip eval` all read it there.
- svdzip_config.json carries the rest: format version, svdzip version, architecture, dtype, the
  method config and report, and the checksum of each tensor file (pipeline/integrity.py).

Outputs of svdzip before this layout also held a rank map in svdzip_config.json; it is read
only when config.json has none, and an output whose two rank maps differ is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from .nn.compressed import check as check_layer
from .pipeline import integrity
from .version import __version__

CONFIG_NAME = "svdzip_config.json"
FORMAT_VERSION = 1
MODEL_TYPE = "svdzip"


def check_rank_map(modules, where) -> None:
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"{where}: 'modules' (the rank map) is missing or empty")
    for name, spec in modules.items():
        if not isinstance(spec, dict) or not all(isinstance(spec.get(k), int) and spec[k] > 0
                                                 for k in ("in_features", "out_features")) \
                or not isinstance(spec.get("rank"), int) or spec["rank"] < 0:
            raise ValueError(f"{where}: module {name} has an invalid spec {spec}")
        check_layer(spec, f"{where}: module {name}")


def write_meta(directory, architecture: str, dtype: str, report=None) -> None:
    """svdzip_config.json, with the checksums of the tensor files already in `directory`
    (so it is written last)."""
    directory = Path(directory)
    meta = {"format_version": FORMAT_VERSION, "svdzip_version": __version__,
            "architecture": architecture, "dtype": dtype,
            "method_config": report.config if report is not None else None,
            "report": report.to_dict() if report is not None else None,
            "checksums": integrity.record(directory)}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))


def _json(f: Path) -> dict:
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f} is corrupt: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{f} is corrupt: not a JSON object")
    return d


def _check_version(version, f: Path) -> None:
    if version != FORMAT_VERSION:
        raise ValueError(f"{f}: format_version {version!r} is not supported (this svdzip reads {FORMAT_VERSION})")


def hf_rank_map(path: Path) -> dict | None:
    """config.json's quantization_config rank map (checked), or None if it has none."""
    f = path / "config.json"
    try:
        q = _json(f).get("quantization_config") or {}
    except (OSError, ValueError):
        return None
    if q.get("quant_method") != MODEL_TYPE:
        return None
    _check_version(q.get("format_version"), f)
    check_rank_map(q.get("modules"), f)
    return q["modules"]


def read_meta(path) -> dict:
    """svdzip_config.json (or {} for a directory written by an older save_pretrained) with
    "modules" set to the one rank map. Raises naming the file for anything damaged."""
    path = Path(path)
    f = path / CONFIG_NAME
    meta = _json(f) if f.is_file() else None
    modules = hf_rank_map(path)
    if meta is None and modules is None:
        raise FileNotFoundError(f"{f} not found and {path / 'config.json'} has no svdzip quantization_config: "
                                f"{path} is not an svdzip output directory")
    meta = meta or {"format_version": FORMAT_VERSION}
    _check_version(meta.get("format_version"), f)
    old = meta.get("modules")
    if modules is None:
        check_rank_map(old, f)
        modules = old
    elif old is not None and old != modules:
        differ = sorted(n for n in set(old) | set(modules) if old.get(n) != modules.get(n))
        raise ValueError(f"{path}: svdzip_config.json and config.json disagree on the rank map "
                         f"(e.g. {differ[0]}: {old.get(differ[0])} vs {modules.get(differ[0])}); "
                         f"config.json's quantization_config is the one svdzip writes now")
    return {**meta, "modules": modules}


def verify_dir(path, verify: bool | None = None) -> list[str]:
    """Check the tensor files of output `path` against svdzip_config.json's checksums."""
    path = Path(path)
    f = path / CONFIG_NAME
    checksums = _json(f).get("checksums") if f.is_file() else None
    return integrity.verify(path, checksums, verify)
