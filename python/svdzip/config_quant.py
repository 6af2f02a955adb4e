"""The allowed values of the output part's quantization options (factor_bits, base_bits, group_size,
base_method, base_rounds, base_from, bits) and their own checks, which raise and never rewrite. Checks that
involve other parts (refinement, objective, allocation) are CompressConfig's."""

from __future__ import annotations

FACTOR_BITS = (16, 8, 4)           # 16 = the model's own dtype
BASE_BITS = (0, 2, 3, 4, 8)        # 0 = no quantized base
GROUP_SIZES = (32, 64, 128, 256)   # the groups torch's int4 kernel takes
BASE_METHODS = ("rtn", "gptq")      # how svdzip rounds a base (nn/quant_matrix.py, nn/gptq.py)


def check_output(out) -> None:
    for name, allowed in (("factor_bits", FACTOR_BITS), ("base_bits", BASE_BITS), ("group_size", GROUP_SIZES)):
        v = getattr(out, name)
        if isinstance(v, bool) or v not in allowed:
            raise ValueError(f"{name} = {v!r} must be one of {allowed}")
    if out.base_method not in BASE_METHODS:
        raise ValueError(f"base_method = {out.base_method!r} must be one of {BASE_METHODS}")
    if out.base_method != "rtn" and (not out.base_bits or out.base_from):
        raise ValueError(f"base_method = {out.base_method!r} rounds svdzip's own base: it needs base_bits "
                         f"and no base_from")
    if isinstance(out.base_rounds, bool) or not isinstance(out.base_rounds, int) or not 1 <= out.base_rounds <= 16:
        raise ValueError(f"base_rounds = {out.base_rounds!r} must be an integer in [1, 16]")
    if out.base_rounds > 1 and (not out.base_bits or out.base_from):
        raise ValueError(f"base_rounds = {out.base_rounds} rounds svdzip's own base again: it needs base_bits "
                         f"and no base_from (a checkpoint's base is kept as it is)")
    if out.base_from is not None and (not isinstance(out.base_from, str) or not out.base_bits):
        raise ValueError(f"base_from = {out.base_from!r} must be a directory, with base_bits set to its bits")
    if out.bits is not None and (isinstance(out.bits, bool) or not isinstance(out.bits, (int, float))
                                 or not 0 < out.bits <= 32):
        raise ValueError(f"bits = {out.bits!r} must be a number in (0, 32] (bits per targeted weight)")


def check_output_with(cfg) -> None:
    """The output part against the others."""
    out = cfg.output
    if out.bits is not None and (cfg.overrides or cfg.places_last_blocks):
        raise ValueError("bits (a byte budget) spreads over every target: it does not combine with "
                         "overrides or last-blocks")
    if out.bits is not None and cfg.strategy == "sensitivity":
        raise ValueError("bits (a byte budget) is priced in stored bits by allocation='loss' and 'uniform'; "
                         "allocation='sensitivity' prices parameters and would store more than the budget")
    if out.quantized and cfg.refinement.epochs:
        raise ValueError("refine_epochs > 0 tunes fp factors; it does not run with factor_bits < 16 or base_bits")
    if out.base_bits and cfg.objective.kind == "compensated":
        # measured (SmolLM2, 4-bit base, pair at 0.1, 16 x 512 calibration, wiki on 2 windows): plain
        # sequential 23.4, compensated 1345; a low-rank pair cannot carry the compensated target's
        # correction of the whole weight (docs/findings.md, "Bytes")
        raise ValueError("objective = 'compensated' with a quantized base ruins the model (measured on SmolLM2: "
                         "wiki 1345 vs 23.4 with the plain objective): use objective='plain' with base_bits")
    if out.base_bits and cfg.strategy not in ("uniform", "last_blocks"):
        raise ValueError(f"allocation = {cfg.strategy!r} prices the weight's own spectrum, not the "
                         f"spectrum of a quantized base's error: use allocation='uniform' with base_bits")
