"""Causal self-attention on oneDNN's products for the engine's CPU block forwards (``--cpu-linear onednn``).

torch's CPU flash kernel took about a quarter of a block forward of the embedded model (3.8 of 15.8 ms, 2 Zen 5
cores); prunelab/onednn.py's chunked causal attention does the same work in 2.5 ms, the block in 14.1 ms
(medians, benchmarks/results/cpu_linear_zen5_attn.md). Inside
``attention_kernel`` the block's transformers attention modules whose config says "sdpa" dispatch to it through
transformers' AttentionInterface (one registered name, no per-family code); any call it does not cover exactly
(a mask, dropout, non-causal or cached attention, sliding windows, softcaps, sinks, another device, autograd)
goes to transformers' own sdpa function unchanged. bfloat16/float16 forwards get their attention computed in float32
(9.9 -> 8.7 ms per bf16 block). The config is restored on exit, so evaluation and
saving never see it. Results differ from sdpa's by float rounding only, like the Linear kernel's.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import nn

from .. import onednn

NAME = "prunelab_onednn_causal"
# keyword arguments that carry no attention semantics (positions are already in the rotated q and k)
_NEUTRAL = frozenset({"position_ids", "cache_position", "use_cache"})
# bfloat16/float16 forwards compute their attention in float32 (sdpa's CPU kernels accumulate in float32 too)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward


def covers(module, query, key, attention_mask, dropout, is_causal, kwargs) -> bool:
    """Whether the chunked kernel computes exactly what sdpa would for this call: plain causal self-attention."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return (attention_mask is None and not dropout and causal is True
            and query.dtype in _DTYPES and key.dtype == query.dtype and query.device.type == "cpu"
            and not (torch.is_grad_enabled() and query.requires_grad)
            and query.shape[2] == key.shape[2] and query.shape[1] % key.shape[1] == 0
            and all(name in _NEUTRAL or value is None or value is False for name, value in kwargs.items()))


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers' attention-function signature: (B, H, L, D) query, (B, KV, L, D) key/value."""
    if not covers(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                       is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if query.dtype == torch.float32:
        return onednn.causal_attention(query, key, value, scale), None
    out = onednn.causal_attention(query.float(), key.float(), value.float(), scale)
    return out.to(query.dtype), None


@functools.cache
def _register() -> bool:
    """Make NAME known to transformers (once per process); False where this transformers has no such interface."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # an older transformers: nothing to dispatch through, sdpa stays
        return False
    AttentionInterface.register(NAME, attention_forward)
    # masks built while the name is set (a whole-model forward) must be sdpa's: transformers builds none at all
    # for an implementation it has no mask function for
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return True


@contextmanager
def attention_kernel(block: nn.Module, kernel: str | None):
    """Inside the context, ``block``'s attention modules whose config's implementation is "sdpa" run on
    ``kernel`` ("onednn"; anything else changes nothing). Configs are shared with the model: they are switched
    back on exit, error or not."""
    switched = []
    if kernel == "onednn" and onednn.available() and _register():
        for module in block.modules():
            config = getattr(module, "config", None)
            # configs with sub-configs (multimodal) are left alone: the setter would rewrite theirs too
            if (config is not None and getattr(config, "_attn_implementation", None) == "sdpa"
                    and not getattr(config, "sub_configs", None) and all(c is not config for c in switched)):
                config._attn_implementation = NAME
                switched.append(config)
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"
