"""DSnoT (Zhang et al., ICLR 2024, arXiv 2310.08915): training-free mask refinement by pruning-and-growing.

No weight is ever changed, only which ones are kept: a revived weight gets back its dense value. Per output
row r the expected reconstruction error (dense minus sparse output, over the calibration inputs) is

    e_r = Σ_j (Ŵ_rj − W_rj) · E[x_j]          (Ŵ dense, W current sparse weight)

Each cycle, every row whose |e_r| exceeds ``threshold`` makes one swap:
  grow   the pruned j with Ŵ_rj E[x_j] of the sign of e_r (reviving it moves e_r toward 0) and the largest
         |Ŵ_rj E[x_j]| / Var(x_j)^``var_power``: a big expected reduction that varies little across inputs;
  prune  among the kept k whose removal does not push the error (after growing) further from 0, i.e.
         W_rk E[x_k] · e_r' ≤ 0, the one of least Wanda importance |W_rk| · ‖x_k‖₂; for N:M it must lie in
         the group of the grown weight, so every group keeps its count.
The row's count is kept exactly. A row stops when |e_r| ≤ ``threshold``, after ``max_cycles`` swaps, when no
candidate exists, or (our safeguard, so |e_r| never increases) when the swap would not strictly reduce |e_r|.
The paper's stopping threshold is likewise absolute. Var(x_j) = E[x_j²] − E[x_j]² needs the "mean" statistic.

``hessian`` (our addition, the ``dsnot-h`` refinement): the same moves, but a swap is kept only if it also lowers
the row's true reconstruction error (Ŵ_r − W_r) H (Ŵ_r − W_r)ᵀ, H = XᵀX; the mean-only error of the paper can
improve while the real error gets worse (measured on the embedded model: plain DSnoT loses to Wanda at 60%).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..stats import LayerStats
from ..patterns import Pattern, select_pruned
from .base import PruningAlgorithm, register


def dsnot_refine(w_dense: torch.Tensor, w_pruned: torch.Tensor, stats: LayerStats, pattern: Pattern,
                 max_cycles: int = 50, threshold: float = 0.1, var_power: float = 1.0,
                 hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Refine the mask of ``w_pruned`` (zeros = pruned) toward the dense output in expectation; see module doc."""
    wd = w_dense.double()
    w = w_pruned.double().clone()
    n = max(stats.n_tokens, 1)
    mu = stats.column_mean().to(wd)
    sq = stats.column_sq_norm().to(wd)
    var = (sq / n - mu ** 2).clamp_min(0)
    var = var.clamp_min(1e-12 * float(var.max().clamp_min(1e-30)))
    norm = sq.sqrt()
    grow_gain = wd * mu[None, :]  # reviving j lowers e_r by this
    grow_score = grow_gain.abs() / var[None, :] ** var_power
    pruned = w == 0
    rows = torch.arange(w.shape[0], device=w.device)
    group = torch.arange(w.shape[1], device=w.device) // pattern.m if pattern.is_nm else None
    live = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
    if hessian is not None:
        h = hessian.to(wd)
        hd = (wd - w) @ h  # H (Ŵ_r − W_r) per row, updated with each swap
    for _ in range(max_cycles):
        e = (wd - w) @ mu
        live &= e.abs() > threshold
        if not live.any():
            break
        sign = torch.sign(e)[:, None]
        growable = pruned & (grow_gain * sign > 0)
        g = grow_score.masked_fill(~growable, -1.0).argmax(dim=1)
        e_grown = e - grow_gain[rows, g]
        drop_gain = w * mu[None, :]  # pruning k raises e_r by this
        importance = w.abs() * norm[None, :]
        droppable = ~pruned & (drop_gain * torch.sign(e_grown)[:, None] <= 0)
        if group is not None:
            droppable &= group[None, :] == group[g][:, None]
        k = importance.masked_fill(~droppable, float("inf")).argmin(dim=1)
        e_new = e_grown + drop_gain[rows, k]
        accept = live & growable.any(dim=1) & droppable.any(dim=1) & (e_new.abs() < e.abs())
        if hessian is not None:  # reviving g changes d_g by a, pruning k changes d_k by b (d = Ŵ − W)
            a, b = -(wd - w)[rows, g], w[rows, k]
            change = (2 * a * hd[rows, g] + a * a * h[g, g] + 2 * b * hd[rows, k] + b * b * h[k, k]
                      + 2 * a * b * h[g, k])
            accept &= change < 0
        live &= accept
        r = rows[accept]
        if hessian is not None:
            hd[r] += a[accept, None] * h[g[accept]] + b[accept, None] * h[k[accept]]
        w[r, g[accept]] = wd[r, g[accept]]
        w[r, k[accept]] = 0.0
        pruned[r, g[accept]] = False
        pruned[r, k[accept]] = True
    return w.to(w_pruned.dtype)


@register
@dataclass
class DSnoT(PruningAlgorithm):
    """Wanda's mask refined by DSnoT."""
    name = "dsnot"
    needs = frozenset({"sq_norm", "mean"})
    default_scope = "row"
    max_cycles: int = 50
    threshold: float = 0.1
    var_power: float = 1.0

    def __post_init__(self):
        if self.max_cycles < 0 or self.threshold < 0:
            raise ValueError("dsnot needs max_cycles >= 0 and threshold >= 0")

    def prune(self, weight: torch.Tensor, stats, pattern: Pattern) -> torch.Tensor:
        w = weight.float()
        wanda = w.abs() * stats.column_sq_norm().sqrt().to(w)[None, :]
        sparse = w.masked_fill(select_pruned(wanda, pattern), 0.0)
        return dsnot_refine(w, sparse, stats, pattern, self.max_cycles, self.threshold, self.var_power)
