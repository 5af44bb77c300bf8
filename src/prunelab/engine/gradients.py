"""Gradient statistics: ∂L_s/∂W of every prunable weight, L_s = calibration sequence s's mean next-token NLL.

Computed once, on the dense model, before any layer is pruned (as GBLM, LLM-Pruner and Fisher pruning do), and
block by block so that memory stays bounded by one block: for each chunk of calibration sequences a forward
pass keeps every block's *input* (chunk × blocks × seqlen × hidden floats, on the CPU; ``chunk_bytes`` caps it),
the head gives ∂L_s/∂h at the last block's output, and the blocks are then walked backwards, each recomputed
on ``device`` with autograd on (activation checkpointing at block boundaries): that yields the block's weight
gradients and the gradient of its input, which feeds the block below. Sequences run one at a time, so each
weight gradient is one sequence's g_s, as ``grad_sq`` (Σ_s g_s²) needs. Cost: about three block forwards per
sequence. Whole-model autograd would instead hold every block's internal activations (attention, MLP) and
the whole model on the device at once.

Result: per prunable layer, {kind: Σ_s kind.fold(g_s)} (fp32, CPU, each the size of the weight) and
"samples": the number of sequences. The last result is kept, keyed by a hash of every model parameter and of the
calibration token ids, so consecutive runs of a sweep that start from the same dense weights share one backward
pass: a request for kinds the kept result lacks computes them together with the kept ones (each kind's sum is
the same as when computed alone), so runs alternating taylor and fisher pay for two passes in all. The engine
drops it as soon as a run needs no gradients, so it never counts in another method's memory.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.adapters import ModelAdapter
from ..stats import stat_kind


_CACHE: dict = {}  # {"key": (parameters hash, calibration hash), "kinds": frozenset, "sums": {...}}


def _fingerprint(model, calibration: torch.Tensor) -> tuple[str, str]:
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest(), hashlib.blake2b(calibration.cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def collect_gradients(adapter: ModelAdapter, calibration: torch.Tensor, kinds, device, progress: bool = True,
                      chunk_bytes: int = 512 * 2**20, cache: bool = True) -> dict[str, dict]:
    """Gradient statistics of ``kinds`` for every prunable layer (see the module doc). A fresh dict each call."""
    kinds = frozenset(kinds)
    key = _fingerprint(adapter.model, calibration) if cache else None
    computed = kinds
    if cache and _CACHE.get("key") == key:
        if kinds <= _CACHE["kinds"]:
            return _select(_CACHE["sums"], kinds)
        computed = kinds | _CACHE["kinds"]  # same weights, other kinds: keep both, so a sweep alternating
        # methods (taylor, fisher, taylor, fisher) pays for a second backward pass, not one per run
    clear_cache()
    sums = _collect(adapter, calibration, computed, device, progress, chunk_bytes)
    if cache:
        _CACHE.update({"key": key, "kinds": computed, "sums": sums})
    return _select(sums, kinds)


def _select(sums: dict, kinds) -> dict[str, dict]:
    return {layer: {k: v for k, v in entry.items() if k in kinds or k == "samples"} for layer, entry in sums.items()}


def clear_cache() -> None:
    _CACHE.clear()


def _collect(adapter: ModelAdapter, calibration: torch.Tensor, kinds, device, progress: bool,
             chunk_bytes: int) -> dict[str, dict]:
    kinds = [stat_kind(k) for k in sorted(kinds)]
    if any(k.source != "gradients" for k in kinds):
        raise ValueError("collect_gradients computes gradient statistics only")
    device = torch.device(device)
    model, blocks = adapter.model, adapter.blocks
    calls = adapter.record_block_calls(calibration)
    layers = [adapter.prunable_layers(block) for block in blocks]
    names = [{name: f"{adapter.family.blocks}.{i}.{name}" for name in block_layers}
             for i, block_layers in enumerate(layers)]
    sums = {names[i][n]: {k.name: torch.zeros(adapter.get_weight(l).shape) for k in kinds}
            for i, block_layers in enumerate(layers) for n, l in block_layers.items()}
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    per_sequence = len(blocks) * calibration.shape[1] * hidden * 4
    chunk = max(1, min(calibration.shape[0], chunk_bytes // per_sequence))
    trainable = {p: p.requires_grad for p in model.parameters()}
    bar = tqdm(total=calibration.shape[0] * len(blocks), desc="gradients", unit="seq·block", disable=not progress)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for block_layers in layers:
            for layer in block_layers.values():
                layer.weight.requires_grad_(True)
        for start in range(0, calibration.shape[0], chunk):
            ids = calibration[start:start + chunk]
            boundaries = [adapter.block_inputs(ids)]  # boundaries[i]: input of block i, (chunk, seqlen, hidden)
            with torch.no_grad():
                for i, block in enumerate(blocks):
                    home = next(block.parameters()).device
                    block.to(device)
                    call = calls[i].to(device)
                    outs = [adapter.run_block(block, h[None].to(device), call).to(home) for h in boundaries[-1]]
                    boundaries.append(torch.cat(outs))
                    block.to(home)
            grad_out = torch.cat([_loss_gradient(adapter, h[None], row) for h, row in zip(boundaries.pop(), ids)])
            for i in reversed(range(len(blocks))):
                block = blocks[i]
                home = next(block.parameters()).device
                block.to(device)
                call = calls[i].to(device)
                grad_in = torch.empty_like(grad_out)
                for s in range(ids.shape[0]):
                    x = boundaries[i][s:s + 1].to(device).requires_grad_(i > 0)
                    with torch.enable_grad():
                        adapter.run_block(block, x, call).backward(grad_out[s:s + 1].to(device))
                    for name, layer in layers[i].items():
                        g = adapter.oriented(layer, layer.weight.grad).float()
                        for kind in kinds:
                            sums[names[i][name]][kind.name].add_(kind.fold(g).cpu())
                        layer.weight.grad = None
                    if i > 0:
                        grad_in[s:s + 1] = x.grad.to(grad_in.device)
                    bar.update()
                grad_out = grad_in
                boundaries.pop()
                block.to(home)
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)
            p.grad = None
        bar.close()
    for entry in sums.values():
        entry["samples"] = calibration.shape[0]
    return sums


def _loss_gradient(adapter: ModelAdapter, last_hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """∂L/∂h for one sequence: L = mean over positions of −log p(next token), h the last block's output."""
    h = last_hidden.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = adapter.head(h)[0, :-1].float()
        F.cross_entropy(logits, ids[1:].to(logits.device)).backward()
    return h.grad.to(last_hidden.device)
