"""Low-rank KV cache: exact at full rank, same math as the uncached compressed model at reduced
rank, clear errors for configurations it cannot serve."""

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from svdzip.kvcache import LowRankKVCache, kv_overrides
from svdzip.nn import LowRankLinear
from svdzip.pipeline.walk import decoder_layers
from tiny_models import tiny


def _compress_kv(model, rank_of):
    """Replace every k_proj / v_proj by its truncated SVD at rank_of(out_features)."""
    for block in decoder_layers(model):
        attn = block.self_attn
        for name in ("k_proj", "v_proj"):
            lin = getattr(attn, name)
            setattr(attn, name, LowRankLinear.from_linear(lin, rank_of(lin.out_features)))
    return model


def _generate(model, ids, cache, n=64):
    out = model.generate(ids, cache=cache, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, dim=1)


def _uncached_logits(model, seq, n):
    """Logits that predicted each of the last n tokens of seq, from one full forward without cache."""
    with torch.no_grad():
        logits = model(seq, use_cache=False).logits
    return logits[:, -n - 1:-1]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_full_rank_equals_dense_model(arch):
    dense = tiny(arch)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))
    ref_seq, ref_logits = _generate(dense, ids, DynamicCache(config=dense.config), n=16)
    model = _compress_kv(tiny(arch), lambda out: out)
    with LowRankKVCache(model) as cache:
        seq, logits = _generate(model, ids, cache, n=16)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_reduced_rank_cache_matches_uncached_model_over_64_tokens(arch):
    model = _compress_kv(tiny(arch), lambda out: out // 4)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(4))
    with LowRankKVCache(model) as cache:
        seq, logits = _generate(model, ids, cache, n=64)
        assert cache.get_seq_length() == 7 + 64 - 1   # the last token is never fed back
        rank = model.model.layers[0].self_attn.k_proj.rank
        assert cache.layers[0].keys.shape == (2, 7 + 63, rank)
    torch.testing.assert_close(logits, _uncached_logits(model, seq, 64), rtol=1e-4, atol=1e-4)
    # the dense cache of the same compressed model gives the same tokens
    dense_seq, _ = _generate(model, ids, DynamicCache(config=model.config), n=64)
    assert torch.equal(seq, dense_seq)


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_values_after_attention_give_the_dense_cache_tokens_over_64_tokens(arch, attn, monkeypatch):
    """The faster path (latent values weighed by attention, A_v applied on o_proj's input) against
    the rebuild path and the dense cache of the same compressed model (GQA: 4 heads, 2 kv heads;
    qwen2's k/v projections have a bias)."""
    from svdzip.kvcache import LowRankKVLayer

    model = _compress_kv(tiny(arch), lambda out: out // 4)
    model.set_attn_implementation(attn)
    torch.manual_seed(9)
    for block in decoder_layers(model):      # HF initialises biases at zero: make them count
        for proj in (block.self_attn.k_proj, block.self_attn.v_proj):
            if proj.bias is not None:
                proj.bias.data.normal_(0, 0.5)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(8))
    calls = []
    original = LowRankKVLayer.up_project_attention_output
    monkeypatch.setattr(LowRankKVLayer, "up_project_attention_output",
                        lambda self, out: calls.append(out.shape) or original(self, out))
    with LowRankKVCache(model, values_after_attention=True) as cache:
        assert cache.values_after_attention
        seq, logits = _generate(model, ids, cache, n=64)
    rank, layers = model.model.layers[0].self_attn.v_proj.rank, len(model.model.layers)
    assert len(calls) == 63 * layers and calls[0] == (2, 1, 4 * rank)   # every decode step, every layer
    with LowRankKVCache(model, values_after_attention=False) as cache:
        assert not cache.values_after_attention
        rebuilt_seq, rebuilt_logits = _generate(model, ids, cache, n=64)
    assert len(calls) == 63 * layers                                   # the rebuild path never calls it
    dense_seq, _ = _generate(model, ids, DynamicCache(config=model.config), n=64)
    assert torch.equal(seq, dense_seq) and torch.equal(seq, rebuilt_seq)
    torch.testing.assert_close(logits, rebuilt_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, _uncached_logits(model, seq, 64), rtol=1e-4, atol=1e-4)


def test_values_after_attention_refused_where_attention_cannot_take_latents():
    model = _compress_kv(tiny("llama"), lambda out: out // 2)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="values_after_attention=True is not possible with attention "
                                         "implementation 'flash_attention_2'"):
        LowRankKVCache(model, values_after_attention=True)
    with LowRankKVCache(model, values_after_attention=None) as cache:   # None falls back to rebuilding
        assert not cache.values_after_attention


def test_cache_holds_fewer_bytes_than_dense_cache():
    model = _compress_kv(tiny("llama"), lambda out: out // 4)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(5))
    dense = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=dense, use_cache=True)
    with LowRankKVCache(model) as cache, torch.no_grad():
        out = model(ids, cache=cache, use_cache=True)
        low = cache.nbytes()
        buffers = [b.data_ptr() for b in cache.layers[0]._storage.values()]
        for _ in range(8):   # the 8 spare tokens take 8 decode steps without a new buffer
            out = model(out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
        assert [b.data_ptr() for b in cache.layers[0]._storage.values()] == buffers
        assert cache.nbytes() == low and cache.layers[0].keys.shape[1] == 20
        model(out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)   # the 21st grows them
        assert cache.nbytes() > low and cache.layers[0].keys.shape[1] == 21
    dense_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in dense.layers)
    # latents are out/4 wide; positions add one int64 per token per layer; the buffers hold
    # 8 spare tokens (20 rows for 12 tokens), and nbytes counts them
    assert low == (dense_bytes // 4 + 3 * 12 * 8) * 20 // 12
    assert low < dense_bytes // 2


def test_layers_with_dense_kv_keep_a_dense_cache():
    model = tiny("llama")
    block = decoder_layers(model)[2].self_attn
    block.k_proj = LowRankLinear.from_linear(block.k_proj, 8)
    block.v_proj = LowRankLinear.from_linear(block.v_proj, 8)
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(6))
    with LowRankKVCache(model) as cache:
        seq, logits = _generate(model, ids, cache, n=8)
        assert [type(layer).__name__ for layer in cache.layers] == ["DynamicLayer", "DynamicLayer",
                                                                    "LowRankKVLayer"]
    torch.testing.assert_close(logits, _uncached_logits(model, seq, 8), rtol=1e-4, atol=1e-4)


def test_closed_cache_leaves_no_hooks():
    model = _compress_kv(tiny("llama"), lambda out: out // 2)
    attn = model.model.layers[0].self_attn
    before, before_o = len(attn._forward_pre_hooks), len(attn.o_proj._forward_pre_hooks)
    cache = LowRankKVCache(model, values_after_attention=True)
    assert len(attn._forward_pre_hooks) == before + 1
    assert len(attn.o_proj._forward_pre_hooks) == before_o + 1
    cache.close()
    assert len(attn._forward_pre_hooks) == before
    assert len(attn.o_proj._forward_pre_hooks) == before_o
    with pytest.raises(RuntimeError, match="pre-hook did not run"):
        with torch.no_grad():
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache, use_cache=True)


def test_no_lowrank_kv_is_an_error():
    with pytest.raises(ValueError, match="no block has low-rank k_proj and v_proj"):
        LowRankKVCache(tiny("llama"))


def test_only_k_lowrank_is_an_error():
    model = tiny("llama")
    attn = model.model.layers[1].self_attn
    attn.k_proj = LowRankLinear.from_linear(attn.k_proj, 4)
    with pytest.raises(ValueError, match="block 1 has only one of k_proj / v_proj"):
        LowRankKVCache(model)


def test_latent_wider_than_heads_is_an_error():
    model = _compress_kv(tiny("llama"), lambda out: out // 2)
    k = model.model.layers[0].self_attn.k_proj           # 32 outputs (2 heads x 16)
    k.A = nn.Parameter(torch.randn(32, 40))
    k.B = nn.Parameter(torch.randn(40, 64))
    with pytest.raises(ValueError, match=r"block 0 k_proj has rank 40 .* 32 outputs"):
        LowRankKVCache(model)


def test_sliding_window_attention_is_an_error():
    model = tiny("gemma3")
    for block in decoder_layers(model):
        for name in ("k_proj", "v_proj"):
            setattr(block.self_attn, name, LowRankLinear.from_linear(getattr(block.self_attn, name), 4))
    with pytest.raises(ValueError, match="block 0 uses 'sliding_attention' attention"):
        LowRankKVCache(model)


def test_kv_overrides_give_the_requested_rank():
    from svdzip import SVDConfig, compress
    from tiny_models import calib
    model = tiny("llama")
    cfg = SVDConfig(targets=("*k_proj", "*v_proj"), overrides=kv_overrides(model, 0.25))
    compress(model, cfg, calib(), progress=False)
    ranks = {m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    assert ranks == {8}                                  # 0.25 x 32 outputs
    with pytest.raises(ValueError, match="cache_ratio = 1.5"):
        kv_overrides(model, 1.5)


def test_keys_rotated_by_the_fast_rope_only_where_it_equals_the_models_own():
    from transformers.models.llama import modeling_llama
    from svdzip.rope import is_rotate_half_rope, kernelized_original

    assert is_rotate_half_rope(modeling_llama.apply_rotary_pos_emb)

    def interleaved(q, k, cos, sin):   # GPT-J style pairs (x0, x1), (x2, x3), ...: not rotate-half
        def rot(x):
            return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin
    assert not is_rotate_half_rope(interleaved)
    assert not is_rotate_half_rope(lambda q, k, cos, sin: (q, k))
    assert kernelized_original(interleaved) is interleaved


@pytest.mark.parametrize("values_after_attention", [False, True])
def test_models_own_rope_gives_the_same_tokens_as_the_fast_rope(values_after_attention):
    model = _compress_kv(tiny("qwen2"), lambda out: out // 4)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(6))
    runs = []
    for fast in (True, False):
        with LowRankKVCache(model, values_after_attention=values_after_attention) as cache:
            layers = [layer for layer in cache.layers if hasattr(layer, "fast_rope")]
            assert all(layer.fast_rope for layer in layers)
            for layer in layers:
                layer.fast_rope = fast
            runs.append(_generate(model, ids, cache, n=32))
    assert torch.equal(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0][1], _uncached_logits(model, runs[0][0], 32), rtol=1e-4, atol=1e-4)
