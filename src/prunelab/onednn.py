"""oneDNN's float32 inner product on the CPU, the product behind the engine's ``--cpu-linear onednn``.

torch's own CPU matmul calls MKL's sgemm, which on AMD CPUs takes its AVX2 path; oneDNN's inner product
(``torch.ops.mkldnn._linear_pointwise``, the kernel torch already uses for bfloat16 Linear layers) uses AVX-512
where the CPU has it. Measured on the decoder's shapes: 1.1-1.4x MKL's GFLOP/s on an earlier AVX512 EPYC host
and 2.0-2.2x on a Zen 5 one (benchmarks/results/cpu_linear*.md). Results differ from MKL's by float32 rounding only (another
summation order) and, like MKL's, do not depend on the thread count.
"""
from __future__ import annotations

import torch


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ bᵀ (+ bias)`` for float32 CPU tensors: ``a`` (..., k), ``b`` (n, k), as a Linear with weight ``b``."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
