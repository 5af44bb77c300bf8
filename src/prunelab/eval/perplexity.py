"""Perplexity with the standard loop: non-overlapping windows, ppl = exp(mean token NLL)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = True) -> dict:
    """Each window is scored on its own (no context carried over); the first token of a window is not
    predicted. Logits are reduced in fp32. Returns ppl, mean NLL, windows, tokens scored and seqlen."""
    device = model_device(model)
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
            "tokens": int(scored), "finite": math.isfinite(ppl)}
