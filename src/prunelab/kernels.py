"""Inference kernels for the decoder blocks' pruned Linear layers.

- ``dense``: the model as loaded (zeros multiplied like any other weight).
- ``csr``: every prunable weight as a torch.sparse CSR matrix (int32 indices), multiplied with
  ``torch.sparse.mm`` (MKL's sparse BLAS on CPU). Same outputs up to the order of float summation.
- ``auto``: CSR only where it measures faster. For each group of same-named layers (q_proj of every block, ...)
  with at least ``AUTO_MIN_SPARSITY`` zeros, dense and CSR are timed on the run's own two shapes, decode
  (batch × 1 token) and prefill (batch × prompt tokens), passing once through every layer of the group (so the
  weights come from memory as in a real forward); each phase then uses the faster kernel. A layer that needs
  both keeps both copies (more memory, which the peak RSS shows).

Whether CSR is faster depends on sparsity, shape and the number of tokens per call:
``benchmarks/sparse_kernels.py`` measures it (results in benchmarks/results/sparse_kernels.md).
"""
from __future__ import annotations

import time
import warnings

import torch
from torch import nn

KERNELS = ("dense", "csr", "auto")
# Below this sparsity CSR was slower than dense for every shape and phase measured
# (benchmarks/results/sparse_kernels.md), so auto does not spend time timing it.
AUTO_MIN_SPARSITY = 0.5


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


class PhaseLinear(nn.Module):
    """Dense or CSR chosen per phase: a call with at most ``decode_rows`` rows is a decode step."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, decode: str, prefill: str, decode_rows: int):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.decode, self.prefill, self.decode_rows = decode, prefill, decode_rows
        self.dense = nn.Parameter(weight.detach().contiguous(), requires_grad=False) if "dense" in (decode, prefill) else None
        self.csr = CSRLinear(weight, None) if "csr" in (decode, prefill) else None
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.decode if x.numel() // self.in_features <= self.decode_rows else self.prefill
        if kernel == "csr":
            y = self.csr(x)
            return y if self.bias is None else y + self.bias
        return nn.functional.linear(x, self.dense, self.bias)


def pass_times(fns, x: torch.Tensor, repeats: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` passes through every function (after one untimed pass)."""
    with torch.inference_mode():
        for f in fns:
            f(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for f in fns:
                f(x)
            times.append(time.perf_counter() - start)
    return times


def _time_pass(fns, x: torch.Tensor, repeats: int = 3) -> float:
    """Median seconds of one pass through every function."""
    times = sorted(pass_times(fns, x, repeats))
    return times[len(times) // 2]


def choose_kernels(groups: dict[str, list[torch.Tensor]], batch: int, prompt_len: int) -> dict[str, dict]:
    """For each group of (out, in) weights: the faster kernel per phase, and the timings behind it."""
    choices = {}
    for name, weights in groups.items():
        sparsity = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)
        entry = {"sparsity": sparsity, "decode": "dense", "prefill": "dense", "layers": len(weights)}
        if sparsity >= AUTO_MIN_SPARSITY:
            dense = [lambda x, w=w: nn.functional.linear(x, w) for w in weights]
            csr = [CSRLinear(w, None) for w in weights]
            for phase, rows in (("decode", batch), ("prefill", batch * prompt_len)):
                x = torch.randn(rows, weights[0].shape[1], dtype=weights[0].dtype)
                t_dense, t_csr = _time_pass(dense, x), _time_pass(csr, x)
                entry[f"{phase}_seconds"] = {"dense": t_dense, "csr": t_csr}
                entry[phase] = "csr" if t_csr < t_dense else "dense"
        choices[name] = entry
    return choices


def _replace(block: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(block.get_submodule(parent_name) if parent_name else block, child, module)


def apply_kernel(model, kernel: str, settings=None) -> dict:
    """Swap the decoder blocks' prunable layers for ``kernel``'s modules in place; returns what was done.
    ``settings`` (SpeedSettings: batch, prompt_len) gives auto the shapes to time."""
    from .models.adapters import ModelAdapter

    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r} is not one of {KERNELS}")
    if kernel == "dense":
        return {"kernel": "dense", "csr_layers": 0, "summary": "dense"}
    if next(model.parameters()).device.type != "cpu":
        raise ValueError(f"the {kernel} kernel is a CPU path; the model is on {next(model.parameters()).device}")
    adapter = ModelAdapter(model)
    layers = [(block, name, layer) for block in adapter.blocks for name, layer in adapter.prunable_layers(block).items()]
    if kernel == "csr":
        for block, name, layer in layers:
            _replace(block, name, CSRLinear(adapter.get_weight(layer), getattr(layer, "bias", None)))
        return {"kernel": kernel, "csr_layers": len(layers), "summary": f"{len(layers)} layers as CSR"}
    groups: dict[str, list[torch.Tensor]] = {}
    for _, name, layer in layers:
        groups.setdefault(name, []).append(adapter.get_weight(layer))
    batch, prompt_len = (settings.batch, settings.prompt_len) if settings is not None else (1, 512)
    choices = choose_kernels(groups, batch, prompt_len)
    csr_decode = csr_prefill = 0
    for block, name, layer in layers:
        choice = choices[name]
        if choice["decode"] == choice["prefill"] == "dense":
            continue
        _replace(block, name, PhaseLinear(adapter.get_weight(layer), getattr(layer, "bias", None), choice["decode"],
                                          choice["prefill"], decode_rows=batch))
        csr_decode += choice["decode"] == "csr"
        csr_prefill += choice["prefill"] == "csr"
    return {"kernel": kernel, "csr_layers": max(csr_decode, csr_prefill), "csr_decode_layers": csr_decode,
            "csr_prefill_layers": csr_prefill, "choices": choices,
            "summary": f"CSR for {csr_decode}/{len(layers)} layers in decode, {csr_prefill}/{len(layers)} in prefill"}
