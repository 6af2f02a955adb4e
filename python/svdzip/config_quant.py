"""The quantization options of CompressConfig (factor_bits, base_bits, group_size, base_method,
base_from, bits): their allowed values and their checks, which raise and never rewrite."""

from __future__ import annotations

FACTOR_BITS = (16, 8, 4)           # 16 = the model's own dtype
BASE_BITS = (0, 2, 3, 4, 8)        # 0 = no quantized base
GROUP_SIZES = (32, 64, 128, 256)   # the groups torch's int4 kernel takes
BASE_METHODS = ("rtn", "gptq")      # how svdzip rounds a base (nn/quant_matrix.py, nn/gptq.py)


def check_quantization(cfg) -> None:
    for name, allowed in (("factor_bits", FACTOR_BITS), ("base_bits", BASE_BITS), ("group_size", GROUP_SIZES)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or v not in allowed:
            raise ValueError(f"{name} = {v!r} must be one of {allowed}")
    if cfg.base_method not in BASE_METHODS:
        raise ValueError(f"base_method = {cfg.base_method!r} must be one of {BASE_METHODS}")
    if cfg.base_method != "rtn" and (not cfg.base_bits or cfg.base_from):
        raise ValueError(f"base_method = {cfg.base_method!r} rounds svdzip's own base: it needs base_bits "
                         f"and no base_from")
    if cfg.base_from is not None and (not isinstance(cfg.base_from, str) or not cfg.base_bits):
        raise ValueError(f"base_from = {cfg.base_from!r} must be a directory, with base_bits set to its bits")
    if cfg.bits is not None:
        if isinstance(cfg.bits, bool) or not isinstance(cfg.bits, (int, float)) or not 0 < cfg.bits <= 32:
            raise ValueError(f"bits = {cfg.bits!r} must be a number in (0, 32] (bits per targeted weight)")
        if cfg.overrides or cfg.last_blocks is not None or getattr(cfg, "last_fraction", None) is not None:
            raise ValueError("bits (a byte budget) spreads over every target: it does not combine with "
                             "overrides or last-blocks")
    if (cfg.factor_bits < 16 or cfg.base_bits) and cfg.refine_epochs:
        raise ValueError("refine_epochs > 0 tunes fp factors; it does not run with factor_bits < 16 or base_bits")
    if cfg.base_bits and cfg.objective == "compensated":
        # measured (SmolLM2, 4-bit base, pair at 0.1, 16 x 512 calibration, wiki on 2 windows): plain
        # sequential 23.4, compensated 1345; a low-rank pair cannot carry the compensated target's
        # correction of the whole weight (docs/findings.md, "Bytes")
        raise ValueError("objective = 'compensated' with a quantized base ruins the model (measured on SmolLM2: "
                         "wiki 1345 vs 23.4 with the plain objective): use objective='plain' with base_bits")
    if cfg.base_bits and cfg.allocation not in ("uniform", "last_blocks"):
        raise ValueError(f"allocation = {cfg.allocation!r} prices the weight's own spectrum, not the "
                         f"spectrum of a quantized base's error: use allocation='uniform' with base_bits")
