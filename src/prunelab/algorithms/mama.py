"""MAMA: move each pruned weight onto the kept connection that best carries its input's signal.

The seed paper gives only the idea ("move" pruned weights onto significant connections); prunelab's definition:
the support is chosen by magnitude under the pattern, exactly as ``magnitude`` does. Then, in every output row i,
each pruned weight w_ij is moved onto the kept input k of that row most correlated with input j,

    k*(i, j) = argmax_{k kept in row i} |corr(j, k)|,   corr(j, k) = H_jk / sqrt(H_jj H_kk),   H = XᵀX,

by adding w_ij · H_jk / H_kk to w_ik: x_j ≈ (H_jk / H_kk) x_k is the least-squares fit of input j by input k,
so w_ij x_j is replaced by its best one-input stand-in. All moves use the original w_ij and add up. Ties go to
the lowest k. No solve: per layer one correlation matrix and, per pruned weight, a search down the ``candidates``
most correlated inputs of j (an exact fallback scans all of them when none of those is kept in the row).
Dead inputs (H_jj = 0) have zero correlations and move nothing. Where the layer has a bias, the engine adds
the mean of the signal still removed, (Ŵ − W)·E[x], to it (its default post-step ``bias-correction``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import Pattern, select_pruned
from .base import PruningAlgorithm, register


@register
@dataclass
class MAMA(PruningAlgorithm):
    name = "mama"
    needs = frozenset({"hessian"})
    post_steps = ("bias-correction",)  # the engine moves the mean of the removed signal into the bias
    candidates: int = 64
    row_chunk: int = 256

    def __post_init__(self):
        if self.candidates < 1 or self.row_chunk < 1:
            raise ValueError("mama needs candidates >= 1 and row_chunk >= 1")

    def prune(self, weight: torch.Tensor, stats, pattern: Pattern) -> torch.Tensor:
        h = stats.require_hessian().to(weight.device).double()
        diag = torch.diagonal(h)
        inv_sqrt = torch.where(diag > 0, diag.rsqrt(), torch.zeros_like(diag))
        corr = (h * inv_sqrt[:, None] * inv_sqrt[None, :]).abs()  # |corr(j, k)|, row j
        coef = h * torch.where(diag > 0, 1.0 / diag, torch.zeros_like(diag))[None, :]  # H_jk / H_kk
        # For each input j, inputs in decreasing |corr(j, ·)|; stable, so ties keep the lowest k first.
        t = min(self.candidates, h.shape[0])
        order = torch.sort(corr, dim=1, descending=True, stable=True).indices[:, :t]

        w = weight.double()
        pruned = select_pruned(weight.abs(), pattern)
        out = w.masked_fill(pruned, 0.0)
        cols = torch.arange(w.shape[1], device=w.device)
        for start in range(0, w.shape[0], self.row_chunk):
            rows = slice(start, start + self.row_chunk)
            kept = ~pruned[rows]
            # First kept input in j's candidate list, for every (row, j): (R, in, t) lookups.
            hit = kept[:, order]
            found = hit.any(dim=2)
            target = order[None].expand_as(hit).gather(2, hit.byte().argmax(dim=2, keepdim=True)).squeeze(2)
            miss = pruned[rows] & ~found
            if miss.any():  # exact scan of all kept inputs for the few pruned weights without a hit
                r_idx, j_idx = miss.nonzero(as_tuple=True)
                scores = corr[j_idx].masked_fill(~kept[r_idx], -1.0)
                target[r_idx, j_idx] = scores.argmax(dim=1)
            moving = pruned[rows] & kept.any(dim=1, keepdim=True)
            amount = torch.where(moving, w[rows] * coef[cols[None, :], target], torch.zeros_like(w[rows]))
            out[rows].scatter_add_(1, torch.where(moving, target, torch.zeros_like(target)), amount)
        return out.to(weight.dtype)
