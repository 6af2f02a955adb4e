import math

import pytest

from svdzip import rank
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
    (lambda: SVDConfig(last_blocks=0), "last_blocks = 0"),
    (lambda: SVDConfig(targets=("",)), "non-empty string"),
    (lambda: SVDConfig(gram_products="fp16"), "gram_products = 'fp16'"),
    (lambda: FWSVDConfig(sequential=True), "sequential=True is not supported"),
])
def test_invalid_options_name_the_value(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trip(name):
    cfg = CONFIGS[name](ratio=0.7, ignore=("*down_proj",), overrides={"*q_proj": 0.5})
    d = cfg.to_dict()
    assert d["method"] == name and d["version"] == 1
    assert CompressConfig.from_dict(d) == cfg


def test_from_dict_rejects_unknowns():
    with pytest.raises(ValueError, match="unknown method 'zip'"):
        CompressConfig.from_dict({"version": 1, "method": "zip"})
    with pytest.raises(ValueError, match=r"unknown svd config fields: \['rank'\]"):
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
    assert (cfg.method, cfg.sequential, cfg.objective, cfg.allocation) == ("nsvd", True, "compensated", "loss")
    assert (cfg.first_fraction, cfg.stage2, cfg.compensation) == (0.95, "asvd", 0.25)
    assert sz.recipe("best", ratio=0.6).ratio == 0.6
    other = sz.recipe("best", method="svd_llm")
    assert (other.method, other.objective, other.allocation) == ("svd_llm", "compensated", "loss")
    with pytest.raises(ValueError, match="unknown recipe"):
        sz.recipe("fastest")
    cli = make_config(build_parser().parse_args(["compress", "m", "o", "--recipe", "best", "--method", "svd_llm",
                                                 "--allocation", "uniform"]))
    assert (cli.method, cli.sequential, cli.objective, cli.allocation) == ("svd_llm", True, "compensated", "uniform")
    plain = make_config(build_parser().parse_args(["compress", "m", "o"]))
    assert (plain.method, plain.sequential, plain.objective) == ("nsvd", False, "plain")
