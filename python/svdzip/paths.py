"""Where svdzip keeps what it can recompute (converted models, text and token caches, sensitivity
tables): SVDZIP_CACHE, default ~/.cache/svdzip. A leaf module, so that any layer may ask."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SVDZIP_CACHE", Path.home() / ".cache" / "svdzip"))
