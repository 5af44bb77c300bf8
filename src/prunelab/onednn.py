"""oneDNN's float32 inner product on the CPU, the product behind the engine's ``--cpu-linear onednn``.

torch's own CPU matmul calls MKL's sgemm, which on AMD CPUs takes its AVX2 path; oneDNN's inner product
(``torch.ops.mkldnn._linear_pointwise``, the kernel torch already uses for bfloat16 Linear layers) uses AVX-512
where the CPU has it. Measured on the decoder's shapes: 1.1-1.4x MKL's GFLOP/s on an earlier AVX512 EPYC host
and 2.0-2.2x on a Zen 5 one (benchmarks/results/cpu_linear*.md). Results differ from MKL's by float32 rounding
only (another summation order) and, like MKL's, do not depend on the thread count. ``causal_attention`` builds
causal self-attention from the same product.
"""
from __future__ import annotations

import torch


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ bᵀ (+ bias)`` for float32 CPU tensors: ``a`` (..., k), ``b`` (n, k), as a Linear with weight ``b``."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


_UPPER = {}  # chunk rows -> (rows, 1, rows) bool, True above the diagonal (cached: it is the same every call)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, chunk: int = 256):
    """softmax(scale·q kᵀ + causal mask) v on oneDNN's float32 products, returned as (B, L, H, D) contiguous.

    q (B, H, L, D); k, v (B, KV, L, D), H a multiple of KV: query head h reads key/value head h // (H/KV), as
    transformers' repeat_kv. The G = H/KV query heads sharing a key head are stacked as rows of one product, and
    queries go in chunks of ``chunk`` rows against the keys up to their chunk's end only, which skips most of
    the masked half (flash attention's saving) while every product stays one large GEMM. Measured on the
    embedded model's shapes (512 tokens, 9 heads over 3 key heads, D 64): 2.5 ms against torch's flash kernel's
    3.8 ms on 2 Zen 5 cores (benchmarks/results/cpu_linear_zen5_attn.md). Softmax in float32 over each full row; results differ from flash's by rounding only.
    """
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    out = q.new_empty(batch, length, heads, dim)
    for b in range(batch):
        for g in range(kv_heads):
            keys = k[b, g].contiguous()  # (L, D): the "weight" of the score product
            values_t = v[b, g].t().contiguous()  # (D, L): the "weight" of the output product
            queries = q[b, g * group:(g + 1) * group].transpose(0, 1)  # (L, G, D), a view
            for start in range(0, length, chunk):
                end = min(start + chunk, length)
                rows = end - start
                scaled = q.new_empty(rows, group, dim)
                torch.mul(queries[start:end], scale, out=scaled)  # (token, head) rows, contiguous
                scores = matmul_nt(scaled.view(rows * group, dim), keys[:end])
                upper = _UPPER.get(rows)
                if upper is None:
                    upper = _UPPER[rows] = torch.ones(rows, rows, dtype=torch.bool).triu(1)[:, None, :]
                scores.view(rows, group, end)[..., start:end].masked_fill_(upper, float("-inf"))
                probs = torch.softmax(scores, dim=-1)
                weights = values_t if end == length else values_t[:, :end].contiguous()
                out[b, start:end, g * group:(g + 1) * group] = matmul_nt(probs, weights).view(rows, group, dim)
    return out
