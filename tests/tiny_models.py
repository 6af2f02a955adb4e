"""Tiny random-weight causal LMs of three layouts: Llama (GQA), Qwen2 (q/k/v biases), Gemma-3."""

import torch


def tiny(arch: str, layers: int = 3):
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        cfg = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig
        cfg = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=1,
                               head_dim=16, sliding_window=8, layer_types=None)
        model = Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


def calib(n: int = 4, seqlen: int = 24) -> torch.Tensor:
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(1))


def random_spectra(shapes: dict, seed: int):
    """(σ² per module, descending float64; a loss weight per module in [0.1, 1.1)) for the
    knapsack tests: random, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    spectra = {n: torch.rand(min(s), generator=g, dtype=torch.float64).sort(descending=True).values ** 2
               for n, s in shapes.items()}
    return spectra, {n: float(torch.rand(1, generator=g)) + 0.1 for n in shapes}
