from .compressed import COMPRESSED, build, effective_weight, spec_bits, spec_of, stored_bits
from .lowrank_linear import LowRankLinear
from .quant_lowrank import QuantLowRankLinear
from .quant_matrix import QuantMatrix, reference_math

__all__ = ["COMPRESSED", "LowRankLinear", "QuantLowRankLinear", "QuantMatrix", "build", "effective_weight", "reference_math",
           "spec_bits", "spec_of", "stored_bits"]
