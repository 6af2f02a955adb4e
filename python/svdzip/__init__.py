"""svdzip: low-rank compression of language-model linear layers (SVD, FWSVD, ASVD, SVD-LLM,
NSVD, ResSVD) with a native C++/CUDA core.

`ratio` everywhere is the fraction of targeted parameters that is KEPT (0.8 = the papers'
"20% compression").

`import svdzip` is cheap (no torch, no transformers): the names below load their modules on first
use, so that `svdzip --help` answers at once. Importing svdzip still registers model type /
quant_method "svdzip" with transformers (hf.py) — at once if transformers is already imported,
else the moment it is (a post-import hook), before any `from_pretrained` can run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from .version import __version__

_LAZY = {
    "compress": "api", "collect_statistics": "api", "calibration_batches": "data", "LowRankLinear": "nn",
    "recipe": "config", "build_config": "config", "CompressConfig": "config", "SVDConfig": "config", "FWSVDConfig": "config",
    "ASVDConfig": "config", "SVDLLMConfig": "config", "NSVDConfig": "config", "NIDConfig": "config",
    "ResSVDConfig": "config",
}
_SUBMODULES = ("ops", "api", "config", "data", "eval", "models", "io", "hf", "offload", "driver", "allocation",
               "pipeline", "methods", "calibration", "nn", "kvcache", "lmeval", "plot", "report", "rank")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'svdzip' has no attribute {name!r}")
    globals()[name] = value
    return value


def native_available() -> bool:
    """True when the compiled ops are loaded (else the pure-torch reference runs)."""
    from ._native import native

    return native() is not None


def save_compressed(*args, **kwargs):
    from .io import save_compressed as f
    return f(*args, **kwargs)


def load_compressed(*args, **kwargs):
    from .io import load_compressed as f
    return f(*args, **kwargs)


class _RegisterWithTransformers(importlib.abc.MetaPathFinder):
    """Runs hf.py's registration right after `transformers` itself has been executed. It stays
    on sys.meta_path until then: a mere find_spec("transformers") (an availability probe, as
    accelerate and others make) must not use it up."""

    _busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                importlib.import_module(".hf", __name__)
            spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    from . import hf  # noqa: E402,F401 - registers quant_method / model_type "svdzip" with transformers
elif not any(isinstance(f, _RegisterWithTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTransformers())

__all__ = ["ops", "compress", "collect_statistics", "calibration_batches", "save_compressed", "load_compressed",
           "LowRankLinear", "CompressConfig", "SVDConfig", "FWSVDConfig", "ASVDConfig",
           "SVDLLMConfig", "NSVDConfig", "NIDConfig", "ResSVDConfig", "recipe", "native_available", "__version__"]
