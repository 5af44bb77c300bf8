"""Perplexity with the standard loop: non-overlapping windows, ppl = exp(mean token NLL)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


BATCH_TOKENS = 4096  # tokens per forward when the batch is automatic
BATCH_LOGIT_BYTES = 2 ** 30  # ... and at most this much fp32 logits


def auto_batch_size(seqlen: int, vocab_size: int) -> int:
    """Windows per forward: ~4k tokens (as fast as one 512-token window per forward on idle CPUs, 2-3x faster on
    busy ones), fewer where the fp32 logits would pass 1 GiB."""
    return max(1, min(BATCH_TOKENS // seqlen, BATCH_LOGIT_BYTES // (seqlen * vocab_size * 4)))


def perplexity(model, windows: torch.Tensor, batch_size: int | None = None, progress: bool = True) -> dict:
    """Each window is scored on its own (no context carried over); the first token of a window is not
    predicted. Logits are reduced in fp32. ``batch_size`` windows per forward (None: auto_batch_size); the batch
    changes the result only by float rounding. Returns ppl, mean NLL, windows, tokens scored, seqlen and batch."""
    device = model_device(model)
    if batch_size is None:
        head = model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else getattr(model.config, "vocab_size", 2 ** 17)
        batch_size = auto_batch_size(windows.shape[1], vocab)
    total_nll = 0.0
    scored = 0
    with torch.no_grad():
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", unit="batch",
                          disable=not progress):
            batch = windows[start:start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total_nll += float(nll)
            scored += batch[:, 1:].numel()
    mean_nll = total_nll / scored
    if math.isnan(mean_nll):
        ppl = float("nan")
    else:  # exp overflows past ~709: report inf rather than raise
        ppl = math.exp(mean_nll) if mean_nll < 700 else float("inf")
    return {"ppl": ppl, "nll": mean_nll, "seqlen": int(windows.shape[1]), "windows": int(windows.shape[0]),
            "tokens": int(scored), "finite": math.isfinite(ppl), "batch_size": batch_size}


def blockwise_perplexity(model, windows: torch.Tensor, device="cpu", source=None, batch_size: int | None = None,
                         progress: bool = True, max_activation_memory: int | None = None) -> dict:
    """The same perplexity, computed one decoder block at a time over all windows (activations between blocks
    kept like the engine's: on the device, in host memory or in a file). For models that do not fit in memory
    (``source``: a streaming block source over a saved model) or on the GPU (each block is moved there in turn).
    Equal to ``perplexity`` up to float rounding of the batch shape."""
    from ..engine.sequential import EngineOptions, ModelBlocks, embed_inputs
    from ..models.adapters import ModelAdapter, _get

    adapter = ModelAdapter(model)
    device = torch.device(device)
    source = source if source is not None else ModelBlocks(adapter)
    options = EngineOptions(batch_size=batch_size, max_activation_memory=max_activation_memory)
    n = windows.shape[0]
    batch = options.batch_for(windows.shape[1], device)
    calls, hidden = embed_inputs(adapter, windows, batch, device, options)
    if hasattr(source, "release_inputs"):  # a streaming source: embeddings out, head in, one at a time
        source.release_inputs()
    try:
        with torch.no_grad():
            for i in tqdm(range(len(source)), desc="perplexity (blockwise)", unit="block", disable=not progress):
                block = source.load(i)
                home = next(block.parameters()).device
                block.to(device)
                call = calls[i].to(device)
                for start in range(0, n, batch):
                    hidden.write(start, adapter.run_block(block, hidden.read(start, min(start + batch, n)), call))
                block.to(home)
                source.done(i, block)
            if hasattr(source, "materialize_head"):
                source.materialize_head()
            head = [m for m in (_get(model, adapter.family.final_norm), _get(model, adapter.family.project_out),
                                model.get_output_embeddings()) if m is not None]
            homes = [next(m.parameters()).device for m in head]
            for m in head:
                m.to(device)
            total_nll = 0.0
            for start in range(0, n, batch):
                end = min(start + batch, n)
                logits = adapter.head(hidden.read(start, end))[:, :-1].float()
                targets = windows[start:end, 1:].to(device)
                total_nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                   reduction="sum"))
            for m, home in zip(head, homes):
                m.to(home)
    finally:
        hidden.close()
    scored = n * (windows.shape[1] - 1)
    mean_nll = total_nll / scored
    ppl = float("nan") if math.isnan(mean_nll) else (math.exp(mean_nll) if mean_nll < 700 else float("inf"))
    return {"ppl": ppl, "nll": mean_nll, "seqlen": int(windows.shape[1]), "windows": int(n), "tokens": int(scored),
            "finite": math.isfinite(ppl), "blockwise": True}
