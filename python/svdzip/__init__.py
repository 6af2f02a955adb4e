"""svdzip: low-rank compression of language-model linear layers (SVD, FWSVD, ASVD, SVD-LLM,
NSVD, ResSVD) with a native C++/CUDA core.

`ratio` everywhere is the fraction of targeted parameters that is KEPT (0.8 = the papers'
"20% compression").
"""

from . import ops
from ._native import native as _native_module
from .api import collect_statistics, compress
from .config import (ASVDConfig, CompressConfig, FWSVDConfig, NIDConfig, NSVDConfig, ResSVDConfig,
                     SVDConfig, SVDLLMConfig, recipe)
from .data import calibration_batches
from .nn import LowRankLinear
from . import hf  # noqa: E402,F401 - registers quant_method / model_type "svdzip" with transformers
from .version import __version__


def native_available() -> bool:
    """True when the compiled ops are loaded (else the pure-torch reference runs)."""
    return _native_module() is not None


def save_compressed(*args, **kwargs):
    from .io import save_compressed as f
    return f(*args, **kwargs)


def load_compressed(*args, **kwargs):
    from .io import load_compressed as f
    return f(*args, **kwargs)


__all__ = ["ops", "compress", "collect_statistics", "calibration_batches", "save_compressed", "load_compressed",
           "LowRankLinear", "CompressConfig", "SVDConfig", "FWSVDConfig", "ASVDConfig",
           "SVDLLMConfig", "NSVDConfig", "NIDConfig", "ResSVDConfig", "recipe", "native_available", "__version__"]
