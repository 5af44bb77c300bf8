"""Generated-text samples: greedy, deterministic continuations of a fixed, versioned prompt set, so a pruned model's
text can be read next to the dense model's."""
from __future__ import annotations

import inspect
import time

import torch

from .perplexity import model_device

PROMPT_SET_VERSION = "prunelab-prompts-v1"
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "To make a good cup of tea, you should",
    "The main difference between a virus and a bacterium is that",
    "Water boils at a lower temperature at high altitude because",
)
DEFAULT_MAX_NEW_TOKENS = 48


def kv_cache_argument(model) -> str:
    """transformers >= 5.24 names the KV cache ``cache`` (in and out); older releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_continuation(model, input_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None,
                        ) -> tuple[list[int], str]:
    """Argmax decoding with the model's KV cache; stops after ``max_new_tokens`` or at ``eos_token_id``.
    Returns the new token ids and why it stopped ("eos" | "length")."""
    device = model_device(model)
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    new: list[int] = []
    name = kv_cache_argument(model)
    past = None
    with torch.no_grad():
        step_input = ids
        for _ in range(max_new_tokens):
            out = model(input_ids=step_input, use_cache=True, **({name: past} if past is not None else {}))
            past = getattr(out, name, None)
            if past is None:
                past = out.get("cache", out.get("past_key_values"))
            token = int(out.logits[0, -1].float().argmax())
            new.append(token)
            if eos_token_id is not None and token == eos_token_id:
                return new, "eos"
            step_input = torch.tensor([[token]], dtype=torch.long, device=device)
    return new, "length"


def generate_samples(model, tokenizer, prompts=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     progress: bool = False) -> list[dict]:
    """Greedy continuations of ``prompts`` (default: the fixed set PROMPTS): one record per prompt."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    custom = prompts is not None
    prompts = list(PROMPTS if prompts is None else prompts)
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError("prompts must be non-empty strings")
    was_training = model.training
    model.eval()
    records = []
    try:
        for number, prompt in enumerate(prompts):
            ids = list(tokenizer(prompt)["input_ids"])
            start = time.perf_counter()
            new, stop = greedy_continuation(model, ids, max_new_tokens, tokenizer.eos_token_id)
            seconds = time.perf_counter() - start
            text = tokenizer.decode(new, skip_special_tokens=True)
            records.append({"prompt_set": "custom" if custom else PROMPT_SET_VERSION, "index": number,
                            "prompt": prompt, "continuation": text, "prompt_tokens": len(ids), "new_tokens": len(new),
                            "token_ids": new, "stop": stop, "decoding": "greedy", "max_new_tokens": max_new_tokens,
                            "seconds": seconds})
            if progress:
                print(f"[prunelab] {prompt!r} -> {text!r}", flush=True)
    finally:
        model.train(was_training)
    return records
