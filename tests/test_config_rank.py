import json
import math

import pytest

from svdzip import rank
from svdzip.config import build_config
from svdzip.config import FLAT, PARTS
from svdzip.config import (CONFIGS, ASVDConfig, CompressConfig, FWSVDConfig, NSVDConfig,
                           ResSVDConfig, SVDConfig)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.8", None])
def test_ratio_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"ratio = .* must be a number in \(0, 1\]"):
        SVDConfig(ratio=bad)


@pytest.mark.parametrize("make,msg", [
    (lambda: ASVDConfig(alpha=-1), "alpha = -1"),
    (lambda: ASVDConfig(stat="median"), "stat = 'median'"),
    (lambda: NSVDConfig(variant="III"), "variant = 'III'"),
    (lambda: NSVDConfig(first_fraction=0), "first_fraction = 0"),
    (lambda: ResSVDConfig(stage2="fancy"), "stage2 = 'fancy'"),
    (lambda: SVDConfig(overrides={"*q_proj": 2.0}), r"overrides\['\*q_proj'\] = 2.0"),
    (lambda: build_config("svd", last_blocks=0), "last_blocks = 0"),
    (lambda: SVDConfig(targets=("",)), "non-empty string"),
    (lambda: build_config("svd", gram_products="fp16"), "gram_products = 'fp16'"),
    (lambda: build_config("fwsvd", sequential=True), "sequential=True is not supported"),
])
def test_invalid_options_name_the_value(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trip(name):
    cfg = CONFIGS[name](ratio=0.7, ignore=("*down_proj",), overrides={"*q_proj": 0.5})
    d = cfg.to_dict()
    assert d["method"] == name and d["version"] == 2
    assert CompressConfig.from_dict(d) == cfg
    assert CompressConfig.from_dict(json.loads(json.dumps(d))) == cfg  # as read back from svdzip_config.json


def test_version_1_flat_dicts_still_load():
    """Outputs of an older svdzip carry the flat version-1 config (with the strategy it rewrote)."""
    v1 = {"version": 1, "method": "nsvd", "ratio": 0.7, "targets": ["*"], "ignore": [], "overrides": {},
          "sequential": True, "last_blocks": 2, "allocation": "last_blocks", "objective": "compensated",
          "stage1": "whitened", "stage2": "asvd", "first_fraction": 0.95, "variant": "I", "refine_epochs": 0,
          "factor_bits": 8, "sensitivity_ratios": [0.5, 0.9]}
    cfg = CompressConfig.from_dict(v1)
    assert cfg == build_config("nsvd", ratio=0.7, sequential=True, last_blocks=2, objective="compensated",
                               stage1="whitened", stage2="asvd", factor_bits=8, sensitivity_ratios=(0.5, 0.9))
    assert cfg.strategy == "last_blocks" and cfg.calibration.sequential and cfg.output.factor_bits == 8


def test_from_dict_rejects_unknowns():
    with pytest.raises(ValueError, match="unknown method 'zip'"):
        CompressConfig.from_dict({"version": 2, "method": "zip"})
    with pytest.raises(ValueError, match=r"unknown svd config fields: \['rank'\]"):
        CompressConfig.from_dict({"version": 2, "method": "svd", "rank": 3})
    with pytest.raises(ValueError, match=r"unknown svd option\(s\): rank"):
        CompressConfig.from_dict({"version": 1, "method": "svd", "rank": 3})
    with pytest.raises(ValueError, match="config version 99"):
        CompressConfig.from_dict({"version": 99, "method": "svd"})


@pytest.mark.parametrize("m,n", [(576, 576), (192, 576), (1536, 576), (576, 1536)])
@pytest.mark.parametrize("ratio", [0.9, 0.8, 0.6, 0.2])
def test_rank_keeps_at_most_ratio_of_params(m, n, ratio):
    k = rank.rank_for_ratio(m, n, ratio)
    assert rank.lowrank_params(m, n, k) <= ratio * m * n < rank.lowrank_params(m, n, k + 1)


def test_smollm2_ranks():
    assert rank.rank_for_ratio(576, 576, 0.8) == 230
    assert rank.rank_for_ratio(192, 576, 0.8) == 115   # GQA k/v are not square
    assert rank.rank_for_ratio(1536, 576, 0.8) == 335


def test_last_blocks_ratio_keeps_budget():
    r = rank.last_blocks_ratio(30, 0.8, 20)
    assert math.isclose(20 * r + 10 * 1.0, 30 * 0.8)
    with pytest.raises(ValueError, match="use at least 7"):
        rank.last_blocks_ratio(30, 0.8, 6)
    with pytest.raises(ValueError, match=r"last_blocks = 31 must be in \[1, 30\]"):
        rank.last_blocks_ratio(30, 0.8, 31)


def test_module_ratio_overrides_and_last_blocks():
    cfg = SVDConfig(ratio=0.8, overrides={"*.down_proj": 1.0, "*.q_proj": 0.5})
    assert rank.module_ratio("l.0.mlp.down_proj", 0, 4, cfg) is None
    assert rank.module_ratio("l.0.attn.q_proj", 0, 4, cfg) == 0.5
    assert rank.module_ratio("l.0.attn.k_proj", 0, 4, cfg) == 0.8
    res = ResSVDConfig(ratio=0.8, last_fraction=0.5)
    assert rank.module_ratio("x", 0, 4, res) is None
    assert rank.module_ratio("x", 3, 4, res) == pytest.approx(0.6)


def test_recipes_give_their_fields_and_flags_win():
    import svdzip as sz
    from svdzip.cli import build_parser
    from svdzip.cli_compress import make_config

    cfg = sz.recipe("best")
    assert (cfg.method, cfg.calibration.sequential, cfg.objective.kind, cfg.strategy) == \
        ("nsvd", True, "compensated", "loss")
    assert (cfg.first_fraction, cfg.stage2, cfg.objective.compensation) == (0.95, "asvd", 0.25)
    assert sz.recipe("best", ratio=0.6).ratio == 0.6
    other = sz.recipe("best", method="svd_llm")
    assert (other.method, other.objective.kind, other.strategy) == ("svd_llm", "compensated", "loss")
    with pytest.raises(ValueError, match="unknown recipe"):
        sz.recipe("fastest")
    cli = make_config(build_parser().parse_args(["compress", "m", "o", "--recipe", "best", "--method", "svd_llm",
                                                 "--allocation", "uniform"]))
    assert (cli.method, cli.calibration.sequential, cli.objective.kind, cli.strategy) == \
        ("svd_llm", True, "compensated", "uniform")
    assert cli == sz.recipe("best", method="svd_llm", allocation="uniform")  # one merge for Python and the CLI
    plain = make_config(build_parser().parse_args(["compress", "m", "o"]))
    assert (plain.method, plain.calibration.sequential, plain.objective.kind) == ("nsvd", False, "plain")
    off = make_config(build_parser().parse_args(["compress", "m", "o", "--recipe", "best", "--no-sequential",
                                                 "--objective", "plain"]))
    assert not off.calibration.sequential  # a flag can turn a recipe's option off


def test_validation_raises_and_never_rewrites():
    """What a config was given is what it holds; what follows from it is derived when read."""
    nsvd2 = build_config("nsvd", variant="II")
    assert nsvd2.stage1 is None and nsvd2.stage1_weighting == "whitened_eigen"
    assert build_config("ressvd").allocation.strategy is None and build_config("ressvd").strategy == "last_blocks"
    lb = build_config("svd", last_blocks=2, ignore=["*q_proj"])
    assert lb.allocation.strategy is None and lb.strategy == "last_blocks" and lb.ignore == ["*q_proj"]
    with pytest.raises(ValueError, match="allocation = 'uniform' compresses every block"):
        build_config("svd", last_blocks=2, allocation="uniform")
    with pytest.raises(ValueError, match="allocation = 'uniform' compresses every block"):
        build_config("ressvd", allocation="uniform")
    with pytest.raises(ValueError, match=r"sensitivity_ratios = \(0.9, 0.5\) must be increasing"):
        build_config("svd", sensitivity_ratios=(0.9, 0.5))
    with pytest.raises(ValueError, match="variant = 'II' whitens stage 1"):
        build_config("nsvd", variant="II", stage1="whitened")
    with pytest.raises(ValueError, match=r"unknown svd option\(s\): refine_epoch"):
        build_config("svd", refine_epoch=2)
    with pytest.raises(ValueError, match="calibration = .* must be a svdzip.config.Calibration"):
        SVDConfig(calibration={"sequential": True})


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_part_field_has_a_flat_name_and_a_cli_flag_or_a_reason(part):
    """Every option of a part is reachable by its flat name; those offered on the CLI parse back
    to the same config (flags are generated from the parts' fields)."""
    import dataclasses

    from svdzip.cli import build_parser

    fields = dataclasses.fields(PARTS[part])
    assert {FLAT[f.metadata.get("flag") or f.name] for f in fields} == {(part, f.name) for f in fields}
    help_text = build_parser().parse_args(["compress", "m", "o"])  # parses: every generated flag is valid
    assert help_text.allocation is None
    for f in fields:
        flag = f.metadata.get("flag") or f.name
        assert f.metadata["help"], f"{part}.{f.name} has no help"
        if f.metadata["cli"]:
            assert hasattr(help_text, flag), f"--{flag} missing from svdzip compress"


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_every_method_option_has_help_and_a_flag_that_reaches_the_config(method):
    """Method options' flags, help, choices and defaults come from the method configs' fields:
    each flag given its default's text builds the same config as the method's defaults."""
    from svdzip.cli import build_parser
    from svdzip.cli_compress import make_config
    from svdzip.config import method_option_meta, own_fields

    cls = CONFIGS[method]
    argv = ["compress", "m", "o", "--method", method]
    for name in own_fields(cls):
        meta = method_option_meta(name)
        assert meta["help"], f"{method}.{name} has no help"
        default = cls.__dataclass_fields__[name].default
        if meta.get("choices"):
            assert default is None or default in meta["choices"]
        if default is not None:
            argv += [f"--{name.replace('_', '-')}", str(default)]
    assert make_config(build_parser().parse_args(argv)) == cls()
