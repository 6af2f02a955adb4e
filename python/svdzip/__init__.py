"""svdzip: low-rank compression of language-model linear layers (SVD, ASVD, SVD-LLM, NSVD, ...).

`ratio` everywhere is the fraction of targeted parameters that is KEPT (0.8 = the papers'
"20% compression").
"""

from . import ops
from ._native import native as _native_module

__version__ = "0.1.0"


def native_available() -> bool:
    """True when the compiled ops are loaded (else the pure-torch reference runs)."""
    return _native_module() is not None


__all__ = ["ops", "native_available", "__version__"]
