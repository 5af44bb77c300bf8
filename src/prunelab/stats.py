"""Statistics of a layer's calibration inputs, accumulated only as far as a method asks for them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

STAT_KINDS = frozenset({"sq_norm", "hessian", "mean"})


@dataclass
class LayerStats:
    """What algorithms see of the calibration inputs X (tokens × in_features) of one layer.

    ``sq_norm[j] = Σ_t X[t, j]²`` (Wanda's ‖X_j‖₂²), ``hessian = XᵀX`` and ``mean_sum[j] = Σ_t X[t, j]``, all
    as sums over ``n_tokens`` tokens in ``n_samples`` calibration sequences, in fp32; with the means comes
    ``seq_sum_sq[j] = Σ_s (Σ_{t∈s} X[t, j])² / n_s`` (what the within-sequence variance needs). Each may be None
    if the method did not ask for it.
    """
    n_tokens: int
    sq_norm: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    mean_sum: torch.Tensor | None = None
    n_samples: int = 0
    seq_sum_sq: torch.Tensor | None = None

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


class StatsAccumulator:
    """Accumulates one layer's input statistics over calibration batches (fp32, on the compute device)."""

    def __init__(self, in_features: int, needs: frozenset[str], device):
        unknown = set(needs) - STAT_KINDS
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {sorted(STAT_KINDS)}")
        self.in_features = in_features
        self.n_tokens = self.n_samples = 0
        self.hessian = torch.zeros(in_features, in_features, device=device) if "hessian" in needs else None
        # With the Hessian present, the squared norms are its diagonal: no need to accumulate them twice.
        self.sq_norm = torch.zeros(in_features, device=device) if ("sq_norm" in needs and self.hessian is None) else None
        self.mean_sum = torch.zeros(in_features, device=device) if "mean" in needs else None
        self.seq_sum_sq = torch.zeros(in_features, device=device) if "mean" in needs else None

    def add(self, x: torch.Tensor) -> None:
        """``x``: (sequences, tokens, in_features), or (tokens, in_features) for one sequence."""
        x = x.detach().float()
        x = x.reshape(-1, x.shape[-2], self.in_features) if x.dim() > 2 else x.reshape(1, -1, self.in_features)
        if self.seq_sum_sq is not None:
            self.seq_sum_sq.add_((x.sum(dim=1) ** 2).sum(dim=0) / x.shape[1])
        self.n_samples += x.shape[0]
        x = x.reshape(-1, self.in_features)
        self.n_tokens += x.shape[0]
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)
        if self.sq_norm is not None:
            self.sq_norm.add_((x * x).sum(dim=0))
        if self.mean_sum is not None:
            self.mean_sum.add_(x.sum(dim=0))

    def result(self) -> LayerStats:
        return LayerStats(self.n_tokens, self.sq_norm, self.hessian, self.mean_sum, self.n_samples, self.seq_sum_sq)
