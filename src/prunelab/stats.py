"""Statistics a method can ask for (``needs``), as registered kinds, and what algorithms see of them.

Each kind says where the engine gets it (``source``):
  inputs     accumulated from the layer's calibration inputs X during the block-by-block pass
             (``sq_norm``, ``hessian``, ``mean``; ``start``/``add`` define the accumulator);
  gradients  from a backward pass of the calibration LM loss through the dense model (engine/gradients.py):
             ``fold`` maps one calibration sequence's weight gradient g to what is summed (``grad``: g,
             ``grad_sq``: g²);
  layer      read from the layer module itself (``bias``), no calibration needed.
A new kind is one ``register_stat`` call (in the algorithm's own file if only it uses it); the engine only
looks kinds up here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import onednn

SOURCES = ("inputs", "gradients", "layer")


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of layer math (statistics, solves) for tensors of ``dtype``: float32, or float64 for float64
    ones (a reference mode whose rounding is ~1e9 times smaller, for telling rounding noise from real change)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class StatKind:
    name: str
    source: str
    doc: str
    start: Callable | None = None  # inputs: (in_features, device) -> {LayerStats field or extra key: zero tensor}
    add: Callable | None = None  # inputs: (state, x of shape (sequences, tokens, in)) -> None, in place
    fold: Callable | None = None  # gradients: g (out x in, one sequence) -> tensor to sum
    read: Callable | None = None  # layer: module -> tensor or None
    covered_by: str | None = None  # another kind that already provides it (sq_norm = diag of the hessian)
    finish: Callable | None = None  # inputs: (state) -> None, in place, before results are read (idempotent)
    takes_kernel: bool = False  # inputs: add is called as (state, x, kernel), kernel the engine's CPU product

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"statistic {self.name!r}: source must be one of {SOURCES}")
        needed = {"inputs": ("start", "add"), "gradients": ("fold",), "layer": ("read",)}[self.source]
        if any(getattr(self, f) is None for f in needed):
            raise ValueError(f"statistic {self.name!r} from {self.source} needs {', '.join(needed)}")


_KINDS: dict[str, StatKind] = {}


def register_stat(kind: StatKind) -> StatKind:
    _KINDS[kind.name] = kind
    return kind


def stat_kind(name: str) -> StatKind:
    if name not in _KINDS:
        raise ValueError(f"unknown statistic {name!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def known_stats() -> list[str]:
    return sorted(_KINDS)


def of_source(needs, source: str) -> frozenset[str]:
    """The kinds among ``needs`` that come from ``source`` (unknown names raise)."""
    return frozenset(n for n in needs if stat_kind(n).source == source)


def needs_calibration(needs) -> bool:
    """Whether collecting ``needs`` takes calibration data (input passes or a backward pass)."""
    return bool(of_source(needs, "inputs") or of_source(needs, "gradients"))


@dataclass
class LayerStats:
    """What algorithms see of one layer's calibration statistics.

    Input kinds, as sums over ``n_tokens`` tokens in ``n_samples`` calibration sequences (fp32):
    ``sq_norm[j] = Σ_t X[t, j]²`` (Wanda's ‖X_j‖₂²), ``hessian = XᵀX``, ``mean_sum[j] = Σ_t X[t, j]`` and with it
    ``seq_sum_sq[j] = Σ_s (Σ_{t∈s} X[t, j])² / n_s`` (what the within-sequence variance needs). Every other kind
    (gradients, the layer's bias, third-party kinds) is in ``extra`` by name; ``grad_samples`` counts the
    sequences the gradient sums ran over. Anything the method did not ask for is None / absent.
    """
    n_tokens: int
    sq_norm: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    mean_sum: torch.Tensor | None = None
    n_samples: int = 0
    seq_sum_sq: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    grad_samples: int = 0

    def get(self, name: str) -> torch.Tensor:
        """A statistic by kind name; a clear error if it was not collected."""
        value = getattr(self, name, None) if name in ("sq_norm", "hessian") else self.extra.get(name)
        if value is None:
            raise ValueError(f"this method needs the statistic {name!r}, but it was not collected")
        return value

    def column_sq_norm(self) -> torch.Tensor:
        if self.sq_norm is not None:
            return self.sq_norm
        if self.hessian is not None:
            return torch.diagonal(self.hessian).clone()
        raise ValueError("this method needs input statistics, but none were collected")

    def column_mean(self) -> torch.Tensor:
        """E[x_j] over the calibration tokens."""
        if self.mean_sum is None:
            raise ValueError("this method needs the input column means, but they were not collected")
        return self.mean_sum / max(self.n_tokens, 1)

    def tokens_per_sample(self) -> float:
        return self.n_tokens / max(self.n_samples, 1)

    def column_within_sample_var(self) -> torch.Tensor:
        """Var(x_j) within each calibration sequence, averaged over sequences weighted by their tokens."""
        if self.seq_sum_sq is None:
            raise ValueError("this method needs the input column means, but they were not collected")
        return ((self.column_sq_norm() - self.seq_sum_sq) / max(self.n_tokens, 1)).clamp_min(0)

    def require_hessian(self) -> torch.Tensor:
        if self.hessian is None:
            raise ValueError("this method needs the input Hessian XᵀX, but it was not collected")
        return self.hessian

    def mean_grad(self) -> torch.Tensor:
        """E_s[∂L_s/∂W] over calibration sequences (L_s: sequence s's mean token NLL)."""
        return self.get("grad") / max(self.grad_samples, 1)

    def mean_grad_sq(self) -> torch.Tensor:
        """E_s[(∂L_s/∂W)²], the empirical diagonal Fisher over calibration sequences."""
        return self.get("grad_sq") / max(self.grad_samples, 1)


def _add_sq_norm(state, x):
    state["sq_norm"].add_((x * x).sum(dim=(0, 1)))


def _panels(n: int, width: int = 512) -> list[tuple[int, int]]:
    count = max(1, -(-n // width))
    edges = [i * n // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _add_hessian(state, x, kernel=None):
    # XᵀX is symmetric: accumulate only the row panels' diagonal-and-right parts (about half the FLOPs for wide
    # inputs; each element is the same dot product as in the full product), the lower part is filled in by finish.
    flat = x.reshape(-1, x.shape[-1])
    hessian = state["hessian"]
    if kernel == "onednn" and flat.device.type == "cpu" and flat.dtype == torch.float32:
        columns = flat.t().contiguous()  # (in, tokens): a panel of XᵀX is then one inner product, rows x rows
        for lo, hi in _panels(flat.shape[1]):
            hessian[lo:hi, lo:].add_(onednn.matmul_nt(columns[lo:hi], columns[lo:]))
        return
    for lo, hi in _panels(flat.shape[1]):
        hessian[lo:hi, lo:].addmm_(flat[:, lo:hi].t(), flat[:, lo:])


def _finish_hessian(state):
    hessian = state["hessian"]
    for lo, hi in _panels(hessian.shape[0]):
        hessian[hi:, lo:hi] = hessian[lo:hi, hi:].t()


def _add_mean(state, x):
    state["seq_sum_sq"].add_((x.sum(dim=1) ** 2).sum(dim=0) / x.shape[1])
    state["mean_sum"].add_(x.sum(dim=(0, 1)))


register_stat(StatKind("sq_norm", "inputs", "Σ_t x_j² per input column (Wanda's ‖X_j‖₂²)",
                       start=lambda n, d: {"sq_norm": torch.zeros(n, device=d)}, add=_add_sq_norm,
                       covered_by="hessian"))
register_stat(StatKind("hessian", "inputs", "XᵀX over all calibration tokens",
                       start=lambda n, d: {"hessian": torch.zeros(n, n, device=d)}, add=_add_hessian,
                       finish=_finish_hessian, takes_kernel=True))
register_stat(StatKind("mean", "inputs", "Σ_t x_j and the within-sequence Σ_s (Σ_{t∈s} x_j)² / n_s",
                       start=lambda n, d: {"mean_sum": torch.zeros(n, device=d), "seq_sum_sq": torch.zeros(n, device=d)},
                       add=_add_mean))
register_stat(StatKind("grad", "gradients", "Σ_s ∂L_s/∂W over calibration sequences", fold=lambda g: g))
register_stat(StatKind("grad_sq", "gradients", "Σ_s (∂L_s/∂W)² over calibration sequences", fold=lambda g: g * g))
register_stat(StatKind("bias", "layer", "the layer's bias (None when it has none)",
                       read=lambda layer: getattr(layer, "bias", None)))

_FIELDS = {"sq_norm", "hessian", "mean_sum", "seq_sum_sq"}


class StatsAccumulator:
    """Accumulates one layer's input statistics over calibration batches (in ``dtype``, on the compute device)."""

    def __init__(self, in_features: int, needs: frozenset[str], device, kernel: str | None = None,
                 dtype: torch.dtype = torch.float32):
        """``kernel``: the engine's CPU product ("onednn" or "aten", engine/linear.py; None off the CPU), for the
        kinds that multiply matrices (XᵀX). ``dtype``: of the sums (float32; float64 for float64 activations, see
        ``math_dtype``)."""
        for name in needs:
            if stat_kind(name).source != "inputs":
                raise ValueError(f"statistic {name!r} comes from {stat_kind(name).source}, not from layer inputs")
        self.in_features = in_features
        self.kernel = kernel
        self.n_tokens = self.n_samples = 0
        # A kind another requested kind already provides (sq_norm = diag XᵀX) is not accumulated twice.
        self.kinds = [stat_kind(n) for n in sorted(needs) if stat_kind(n).covered_by not in needs]
        self.state: dict[str, torch.Tensor] = {}
        self.dtype = dtype
        for kind in self.kinds:
            self.state.update({k: v.to(dtype) for k, v in kind.start(in_features, device).items()})

    def add(self, x: torch.Tensor) -> None:
        """``x``: (sequences, tokens, in_features), or (tokens, in_features) for one sequence.

        Sequences are added one at a time, in order, so the float32 sums (and through them the masks) are the
        same whatever calibration batch the engine ran the forwards with."""
        x = x.detach().to(self.dtype)
        x = x.reshape(-1, x.shape[-2], self.in_features) if x.dim() > 2 else x.reshape(1, -1, self.in_features)
        for sequence in x.split(1):
            self.n_samples += 1
            self.n_tokens += sequence.shape[1]
            for kind in self.kinds:
                if kind.takes_kernel:
                    kind.add(self.state, sequence, self.kernel)
                else:
                    kind.add(self.state, sequence)

    def result(self) -> LayerStats:
        for kind in self.kinds:
            if kind.finish is not None:
                kind.finish(self.state)
        fields = {k: v for k, v in self.state.items() if k in _FIELDS}
        extra = {k: v for k, v in self.state.items() if k not in _FIELDS}
        return LayerStats(self.n_tokens, n_samples=self.n_samples, extra=extra, **fields)
