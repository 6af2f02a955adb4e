"""Who sees which activations: one-shot (dense model) or sequential (block by block)."""
