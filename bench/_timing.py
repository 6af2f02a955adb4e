"""Shared benchmark helpers: median timing with warm-up, machine record, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

from svdzip.benchmark import median_time  # noqa: F401  (re-exported for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu") -> dict:
    import svdzip

    load = os.getloadavg()[0]
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "svdzip": svdzip.__version__, "native": svdzip.native_available(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            # when, and whether anything else was running (docs/results.md prints both)
            "date": datetime.date.today().isoformat(), "date_source": "run", "loadavg_start": round(load, 2),
            "alone": load < 0.5}
    if device == "cuda":
        from svdzip import _native

        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["svdzip_cuda_kernels"] = _native.has_kernel("batched_svd", torch.device("cuda"))
    return info


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path
