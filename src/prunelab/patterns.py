"""Sparsity patterns, and masks chosen from importance scores under a pattern.

Convention everywhere: a mask is True where a weight is *pruned* (set to zero). Scores are "importance": the
lowest scores are pruned. Ties are broken by position (stable sort), so masks are deterministic.
N:M follows SparseGPT: N weights are zeroed in every group of M consecutive input columns (2:4 keeps 2 of 4).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

SCOPES = ("layer", "row", "global")


@dataclass(frozen=True)
class Pattern:
    """What to prune: ``sparsity`` of each layer (unstructured, within ``scope``) or N of every M (``n``, ``m``)."""
    sparsity: float = 0.0
    n: int = 0
    m: int = 0
    scope: str = "layer"

    def __post_init__(self):
        if self.m:
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
                raise ValueError(f"N:M pattern needs integers 0 < N < M, got {self.n}:{self.m}")
            if self.scope == "global":
                raise ValueError("an N:M pattern is per group of input columns; it cannot have global scope")
        else:
            if not (0.0 <= float(self.sparsity) < 1.0):
                raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")

    @classmethod
    def parse(cls, sparsity: float | None = None, pattern: str | None = None, scope: str = "layer") -> "Pattern":
        """From CLI-style values: ``pattern`` is 'unstructured' (default) or 'N:M'."""
        if pattern in (None, "", "unstructured"):
            if sparsity is None:
                raise ValueError("unstructured pruning needs --sparsity (a fraction in [0, 1))")
            return cls(sparsity=float(sparsity), scope=scope)
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
        if not match:
            raise ValueError(f"pattern must be 'unstructured' or 'N:M' such as 2:4, got {pattern!r}")
        nm = cls(n=int(match[1]), m=int(match[2]), scope="row" if scope == "global" else scope)
        if sparsity is not None and abs(float(sparsity) - nm.target_sparsity) > 1e-9:
            raise ValueError(f"pattern {nm.n}:{nm.m} prunes exactly {nm.target_sparsity:g} of the weights; "
                             f"drop --sparsity or make it {nm.target_sparsity:g}")
        return nm

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def target_sparsity(self) -> float:
        return self.n / self.m if self.is_nm else float(self.sparsity)

    @property
    def is_noop(self) -> bool:
        return not self.is_nm and self.sparsity == 0.0

    def describe(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"unstructured {self.sparsity:g} ({self.scope})"

    def to_dict(self) -> dict:
        return {"kind": "n:m" if self.is_nm else "unstructured", "sparsity": self.target_sparsity,
                "n": self.n, "m": self.m, "scope": self.scope}


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries of ``scores`` (flattened order breaks ties)."""
    flat = scores.flatten()
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= flat.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    # O(n) selection instead of a full sort; equal to the first k of a stable argsort.
    if flat.device.type == "cpu":  # numpy's introselect and bool reductions are much faster here (ALPS's hot loop)
        values = (flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat).detach().numpy()
        threshold = np.partition(values, k - 1)[k - 1]
        mask = values < threshold
        deficit = k - int(np.count_nonzero(mask))
        if deficit > 0:
            mask[np.flatnonzero(values == threshold)[:deficit]] = True
        return torch.from_numpy(mask).view(scores.shape)
    threshold = flat.kthvalue(k).values
    mask = flat < threshold
    deficit = k - int(mask.sum())
    if deficit > 0:
        mask[torch.nonzero(flat == threshold).flatten()[:deficit]] = True
    return mask.view_as(scores)


def lowest_k_per_row_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries of every row; ties go to the lower column index (as a stable argsort's
    first k). Selection instead of a full sort: 4.4x faster on the layer shapes of a Llama-2-7B block."""
    rows, cols = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    # numpy's introselect and bool counts run several times faster than torch's on CPU
    mask, threshold, tied = (_at_most_kth_numpy if scores.device.type == "cpu" else _at_most_kth_torch)(scores, k)
    if len(tied):  # rows with ties at the threshold hold more than k entries: keep the first of the tied ones
        sub, limit = scores[tied], threshold[tied]
        ties = sub == limit
        deficit = k - (sub < limit).sum(dim=1, keepdim=True)
        mask[tied] = (sub < limit) | (ties & (ties.cumsum(dim=1) <= deficit))
    return mask


def _at_most_kth_numpy(scores, k):
    """(entries ≤ their row's k-th lowest, that k-th value per row, indices of rows with more than k such)."""
    values = scores.detach().numpy()
    threshold = np.partition(values, k - 1, axis=1)[:, k - 1:k]
    mask = values <= threshold
    tied = np.flatnonzero(np.count_nonzero(mask, axis=1) > k)
    return torch.from_numpy(mask), torch.from_numpy(threshold), torch.from_numpy(tied)


def _at_most_kth_torch(scores, k):
    threshold = scores.kthvalue(k, dim=1, keepdim=True).values
    mask = scores <= threshold
    return mask, threshold, torch.nonzero(mask.sum(dim=1) > k).flatten()


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``n`` lowest of every ``m`` consecutive columns in each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M with M={m} needs the input dimension ({cols}) to be a multiple of {m}")
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.argsort(groups, dim=2, stable=True)[..., :n], True)
    return mask.reshape(rows, cols)


def select_pruned(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """The pruning mask for a 2-D (out, in) score matrix under ``pattern`` (layer or row scope)."""
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
    if pattern.scope == "row":
        return lowest_k_per_row_mask(scores, int(scores.shape[1] * pattern.sparsity))
    if pattern.scope == "layer":
        return lowest_k_mask(scores, int(scores.numel() * pattern.sparsity))
    raise ValueError("global scope is resolved by the engine across layers, not per layer")
