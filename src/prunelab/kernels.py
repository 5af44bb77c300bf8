"""Inference kernels for the decoder blocks' pruned Linear layers.

- ``dense``: the model as loaded (zeros multiplied like any other weight).
- ``csr``: every prunable weight as a torch.sparse CSR matrix (int32 indices), multiplied with
  ``torch.sparse.mm`` (MKL's sparse BLAS on CPU). Same outputs up to the order of float summation.

Whether CSR is faster depends on sparsity, shape and the number of tokens per call:
``benchmarks/sparse_kernels.py`` measures it (results in benchmarks/results/sparse_kernels.md).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

KERNELS = ("dense", "csr")


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) dense -> CSR with int32 indices (half the index bytes of the default int64)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and said in the README
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                       csr.values(), csr.shape, check_invariants=False)


class CSRLinear(nn.Module):
    """y = x Wᵀ + b with W held as CSR."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_csr = to_csr(weight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # CSR (out, in) @ dense (in, tokens): the layout MKL's sparse BLAS multiplies fastest
        y = torch.sparse.mm(self.weight_csr, flat.t().contiguous()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.weight_csr._nnz()}"


def apply_kernel(model, kernel: str, settings=None) -> dict:
    """Swap the decoder blocks' prunable layers for ``kernel``'s modules in place; returns what was done."""
    from .models.adapters import ModelAdapter

    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r} is not one of {KERNELS}")
    if kernel == "dense":
        return {"kernel": "dense", "csr_layers": 0, "summary": "dense"}
    adapter = ModelAdapter(model)
    swapped = 0
    for block in adapter.blocks:
        for name, layer in list(adapter.prunable_layers(block).items()):
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, child, CSRLinear(adapter.get_weight(layer), getattr(layer, "bias", None)))
            swapped += 1
    return {"kernel": kernel, "csr_layers": swapped, "summary": f"{swapped} layers as CSR"}
