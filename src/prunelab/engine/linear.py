"""Which CPU kernel the engine's float32 products use: the block forwards' Linear layers and causal attention,
and the XᵀX statistics.

torch's own CPU matmul ("aten") calls MKL's sgemm; on an earlier AVX512 AMD EPYC host it ran the decoder's Linear
shapes (512 tokens x 576..1536) at ~160 GFLOP/s on 2 cores, where oneDNN's inner product (the kernel torch already
uses for bfloat16) ran them at ~200, and whole block forwards ~10% faster (benchmarks/results/cpu_linear.md); on a
Zen 5 host 2.2x the rate and 0.58x the block forward time (cpu_linear_zen5.md). With
"onednn" every float32 ``nn.Linear`` of the block being computed runs through ``torch.ops.mkldnn._linear_pointwise``
for the duration of the engine's forwards, and is restored afterwards (evaluation and saving never see it); the
statistics accumulators compute XᵀX on the same kernel (prunelab/stats.py), and the block's causal attention runs
on its products too (engine/attention.py).
Outputs differ from aten's by float rounding only (another summation order); like aten's they do not depend on
the thread count. "auto" is oneDNN wherever torch has it (x86 and Arm builds with MKL-DNN), else aten.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .. import onednn
from .attention import attention_kernel

CPU_LINEARS = ("auto", "onednn", "aten")


onednn_available = onednn.available


def check_cpu_linear(choice: str) -> None:
    if choice not in CPU_LINEARS:
        raise ValueError(f"CPU linear kernel must be one of {CPU_LINEARS}, got {choice!r}")


def resolve_cpu_linear(choice: str, device) -> str | None:
    """The kernel a run uses: "onednn" or "aten" on CPU, None elsewhere (CUDA has its own)."""
    check_cpu_linear(choice)
    if torch.device(device).type != "cpu":
        return None
    if choice == "onednn" and not onednn_available():
        raise ValueError("this torch build has no oneDNN (MKL-DNN) linear kernel; use --cpu-linear aten")
    return "onednn" if choice == "onednn" or (choice == "auto" and onednn_available()) else "aten"


def _onednn_forward(layer: nn.Linear):
    def forward(x):
        if x.dtype != torch.float32 or x.requires_grad:
            return nn.Linear.forward(layer, x)
        return onednn.matmul_nt(x, layer.weight, layer.bias)
    return forward


@contextmanager
def linear_kernel(block: nn.Module, kernel: str | None):
    """Run ``block``'s float32 CPU ``nn.Linear`` layers (exactly that class, not subclasses) on ``kernel`` inside
    the context. Hooks still run: only the layers' ``forward`` is shadowed by an instance attribute."""
    patched = []
    if kernel == "onednn":
        for module in block.modules():
            if (type(module) is nn.Linear and module.weight.dtype == torch.float32
                    and module.weight.device.type == "cpu" and "forward" not in module.__dict__):
                module.forward = _onednn_forward(module)
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


@contextmanager
def cpu_kernels(block: nn.Module, kernel: str | None):
    """Both of the engine's forward kernels for ``block``: its float32 Linear layers (``linear_kernel``) and its
    causal attention (engine/attention.py)."""
    with linear_kernel(block, kernel), attention_kernel(block, kernel):
        yield
