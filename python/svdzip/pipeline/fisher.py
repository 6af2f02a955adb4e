"""Fisher importance for FWSVD: per output row, Σ over calibration windows of Σ_j (∂L/∂W_ij)²
of the causal LM loss.

Two ways to get the same sums: `row_fisher` runs the whole model's backward (in memory);
`row_fisher_blockwise` runs it block by block (out of core): a dense forward that spills each
block's input hidden states to disk, the loss gradient at the last block's output, then the
blocks in reverse, each onloaded once, rerun on its saved inputs and backpropagated with the
gradient of its output, which yields the gradient entering the block before it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from . import replay
from .walk import decoder_layers, swapped_forwards, visit


def _recompute_in_backward(layers):
    """Each decoder block keeps only its input for backward and reruns its forward there
    (activation checkpointing): the backward's saved activations drop from every block's to
    one block's. On SmolLM2 with 512-token windows, memory held above the model during Fisher
    collection fell from 859 to 312 MiB. Done on the block's instance `forward` rather than
    transformers' gradient_checkpointing_enable(), which only acts in training mode (dropout on)."""
    return swapped_forwards(
        layers, lambda layer: functools.partial(checkpoint, layer.forward, use_reentrant=False))


@contextlib.contextmanager
def _row_sums_of_squared_grads(params, weights: dict, acc: dict):
    """While open, only `weights` ({name: parameter}) need gradients, and each gradient is
    folded into acc[name] (its rows' Σ g²) as soon as backward has produced it, then dropped:
    one weight-sized gradient is alive at a time instead of all of them."""
    def consume(name):
        def hook(w):
            g = w.grad.float()  # bf16/fp16 gradients: square in fp32 (fp16 squares underflow)
            acc[name] += (g * g).sum(1, dtype=torch.float64)
            w.grad = None
        return hook

    params = list(params)
    before = {p: p.requires_grad for p in params}
    handles = []
    try:
        for p in params:
            p.requires_grad_(False)
        for n, w in weights.items():
            w.requires_grad_(True)
            handles.append(w.register_post_accumulate_grad_hook(consume(n)))
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in before.items():
            p.requires_grad_(flag)
            p.grad = None


def _result(acc: dict, tokens: int) -> dict[str, dict]:
    for n, a in acc.items():
        if not torch.isfinite(a).all():
            raise FloatingPointError(f"{n}: Fisher importance is not finite (NaN/Inf gradients)")
    return {n: {"fisher": a, "tokens": tokens} for n, a in acc.items()}


def _zeros(weights: dict, device) -> dict:
    return {n: torch.zeros(w.shape[0], dtype=torch.float64, device=device) for n, w in weights.items()}


def row_fisher(model, targets, batches: torch.Tensor, progress: bool = True) -> dict[str, dict]:
    device = next(model.parameters()).device
    weights = {t.name: t.module.weight for t in targets}
    acc = _zeros(weights, device)
    with _row_sums_of_squared_grads(model.parameters(), weights, acc), \
            _recompute_in_backward(decoder_layers(model)):
        for row in tqdm(batches, desc="fisher", disable=not progress, leave=False):
            x = row.unsqueeze(0).to(device)
            model(x, labels=x, use_cache=False).loss.backward()
    return _result(acc, batches.numel())


def _spill(path: Path, hidden: list[torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({str(j): h.contiguous() for j, h in enumerate(hidden)}, str(path))


def _unspill(path: Path) -> list[torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return [fh.get_tensor(str(j)) for j in range(len(fh.keys()))]


LOSS_CHUNK = 64  # tokens per slice of the LM head in _loss_gradients


def _loss_gradients(source, hidden: list[torch.Tensor], tokens: torch.Tensor) -> list[torch.Tensor]:
    """∂L/∂h for the last block's output h, per window, with the model's own loss function
    (the same mean over shifted tokens as `model(x, labels=x).loss`). The head runs on
    LOSS_CHUNK tokens at a time, each slice's summed loss over the window's count: every token's
    gradient is its own, so the result is the whole window's, while the logits, their log-softmax
    and its gradient are held for one slice (whole, a 512-token window of Qwen2.5's 152k
    vocabulary holds 3 x 311 MB)."""
    model = source.model
    source.onload_resident()
    try:
        head = replay.head(model)
        grads = []
        for j, h in enumerate(hidden):
            labels = tokens[j:j + 1].to(source.device)
            shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
            count = int((shifted != -100).sum())
            g = torch.empty_like(h, device=source.device)
            for s in range(0, h.shape[1], LOSS_CHUNK):
                x = h[:, s:s + LOSS_CHUNK].to(source.device).requires_grad_(True)
                with torch.enable_grad():
                    loss = model.loss_function(logits=head(x), labels=None, vocab_size=model.config.vocab_size,
                                               num_items_in_batch=count, shift_labels=shifted[:, s:s + LOSS_CHUNK])
                    (g[:, s:s + LOSS_CHUNK],) = torch.autograd.grad(loss, x)
            grads.append(g.to(source.store))
        return grads
    finally:
        source.drop_resident()


def row_fisher_blockwise(source, targets, hidden: list[torch.Tensor], block_args: list,
                         tokens: torch.Tensor, spill_dir, progress: bool = True) -> dict[str, dict]:
    """The Fisher sums of `targets` with one block on the device at a time (module doc).
    `hidden` = the dense hidden states entering block 0 (one (1, seqlen, d) per window);
    each block's inputs are spilled to `spill_dir` (removed at the end): N windows x seqlen x
    hidden x dtype bytes per block on disk, one block's worth in memory."""
    first = min(t.block for t in targets)
    acc, _ = _blockwise_backward(source, targets, hidden, block_args, tokens, spill_dir, first, False, progress)
    return _result(acc, tokens.numel())


def block_output_fisher_blockwise(source, blocks, hidden: list[torch.Tensor], block_args: list,
                                  tokens: torch.Tensor, spill_dir, progress: bool = True) -> dict[int, torch.Tensor]:
    """block_output_fisher with one block on the device at a time: the gradient entering each
    block's output on the way back is the one whose square is summed. `blocks`: the indices
    wanted (the backward stops at the first of them)."""
    _, out = _blockwise_backward(source, [], hidden, block_args, tokens, spill_dir, min(blocks), True, progress)
    return _finite_outputs({b: out[b] for b in sorted(blocks)})


def _blockwise_backward(source, targets, hidden, block_args, tokens, spill_dir, first: int, outputs: bool,
                        progress: bool):
    """(row sums of the targets' squared weight gradients, {block: Σ (∂L/∂z)² per channel of its
    output} when `outputs`), from a forward that spills each block's inputs and a backward that
    onloads each block once, from the last down to `first`."""
    spill = Path(spill_dir)
    spill.mkdir(parents=True, exist_ok=True)
    n = len(source.layers)
    acc, out = {}, {}
    try:
        for i, layer in visit(source, range(n), "fisher forward", progress, leave=False):
            if i >= first:
                _spill(spill / f"in-{i:05d}.safetensors", hidden)
            hidden = replay.run_block(layer, hidden, block_args[i])
        grads = _loss_gradients(source, hidden, tokens)
        del hidden
        # block `first` is visited only for its weights' gradients; without any, its output's is the last wanted
        wanted = any(t.block == first for t in targets)
        for i, layer in visit(source, range(n - 1, first - (1 if wanted else 0), -1), "fisher backward", progress,
                              leave=False):
            if outputs:
                out[i] = _squared_sums(grads)
            weights = {t.name: t.module.weight for t in targets if t.block == i}
            mine = _zeros(weights, source.device)
            inputs = _unspill(spill / f"in-{i:05d}.safetensors")
            rest, kw = block_args[i]
            with _row_sums_of_squared_grads(layer.parameters(), weights, mine), torch.enable_grad():
                for j, x in enumerate(inputs):
                    x = x.to(source.device).requires_grad_(i > first)
                    z = layer(x, *rest, **kw)
                    z = z[0] if isinstance(z, tuple) else z
                    z.backward(grads[j].to(source.device))
                    grads[j] = x.grad.to(source.store) if i > first else None
            acc.update({k: v.cpu() for k, v in mine.items()})
            (spill / f"in-{i:05d}.safetensors").unlink()
        if outputs and not wanted:
            out[first] = _squared_sums(grads)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return acc, out


def _squared_sums(grads: list[torch.Tensor]) -> torch.Tensor:
    """Σ over windows and tokens of the squared gradients, per channel (float64)."""
    return sum(g.float().square().sum(tuple(range(g.dim() - 1)), dtype=torch.float64) for g in grads)


def _finite_outputs(acc: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    for b, a in acc.items():
        if not torch.isfinite(a).all():
            raise FloatingPointError(f"block {b}: the loss gradient at its output is not finite (NaN/Inf)")
    return acc


def block_output_fisher(model, batches: torch.Tensor, progress: bool = True) -> dict[int, torch.Tensor]:
    """{block index: Σ over tokens of (∂L/∂z)² per hidden channel} with z each decoder block's
    output, one backward of the LM loss per window (no weight gradient is formed: the graph
    starts at the embeddings' output). The diagonal Fisher at a block's output turns an error
    ΔZ there into a loss increase, to second order ΔL ≈ ½·Σ F·ΔZ² (allocation "probe")."""
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    acc: dict[int, torch.Tensor] = {}

    def on_output(b):
        def hook(mod, args, out):
            z = out[0] if isinstance(out, tuple) else out

            def fold(g):
                s = _squared_sums([g])
                acc[b] = s if b not in acc else acc[b] + s
            z.register_hook(fold)
        return hook

    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    handles = [layer.register_forward_hook(on_output(b)) for b, layer in enumerate(layers)]
    handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
    try:
        for p in params:
            p.requires_grad_(False)
        with _recompute_in_backward(layers):
            for row in tqdm(batches, desc="fisher (block outputs)", disable=not progress, leave=False):
                x = row.unsqueeze(0).to(device)
                model(x, labels=x, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
    return _finite_outputs(acc)
