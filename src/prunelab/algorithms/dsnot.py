"""DSnoT (Zhang et al., ICLR 2024, arXiv 2310.08915): training-free mask refinement by pruning-and-growing.

No weight value is changed, only which ones are kept: a revived weight gets back its dense value. Per output
row r the expected reconstruction error (dense minus sparse output over one calibration sequence of L tokens,
in expectation) is

    e_r = L · Σ_j (Ŵ_rj − W_rj) · E[x_j]          (Ŵ dense, W current sparse weight)

The factor L (tokens per calibration sequence) is how the authors' code measures it (column sums over a
sequence, averaged over sequences), so ``threshold`` means what their ``--update_threshold`` means.
Each cycle, every row with |e_r| > ``threshold`` makes one swap, as the authors' code does it:
  grow   the next initially pruned j whose Ŵ_rj E[x_j] has the sign of e_r (reviving it moves e_r toward 0),
         in the order of |Ŵ_rj E[x_j]| / Var(x_j)^``var_power`` (a big expected reduction that varies little);
  prune  unstructured: the next initially kept k whose W_rk E[x_k] has the opposite sign of e_r (removing it
         also moves e_r toward 0), least Wanda importance |W_rk|·‖x_k‖₂ first; N:M: the least important weight
         still kept from the initial mask in the grown weight's group of M, so every group keeps its count.
Grown weights are never pruned again and pruned ones never regrown (each candidate list is walked once). The
row's count is kept exactly. A row stops for good when |e_r| ≤ ``threshold``, after ``max_cycles`` cycles, when
a list runs out, or, with ``same_sign`` (the authors' choice for N:M), when a swap would flip the sign of e_r
relative to its initial sign. Var(x_j) is the variance within a calibration sequence, averaged over sequences
(again as the authors' code); it and E[x_j] need the "mean" statistic.

``hessian`` (our addition, the ``dsnot-h`` refinement): a swap is also rejected (and the row stops) unless it
lowers the row's true reconstruction error (Ŵ_r − W_r) H (Ŵ_r − W_r)ᵀ, H = XᵀX; the mean-only error of the
paper can improve while the real error gets worse.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..stats import LayerStats
from ..patterns import Pattern, select_pruned
from ..steps import LayerSolve, PostStep, register_step
from .base import PruningAlgorithm, register


def _walk_order(key: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the member columns sorted by ascending key (non-members after them), and how many there are."""
    order = key.masked_fill(~member, float("inf")).argsort(dim=1, stable=True)
    return order, member.sum(1)


def dsnot_refine(w_dense: torch.Tensor, w_pruned: torch.Tensor, stats: LayerStats, pattern: Pattern,
                 max_cycles: int = 50, threshold: float = 0.1, var_power: float = 1.0,
                 same_sign: bool | None = None, hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Refine the mask of ``w_pruned`` (zeros = pruned) toward the dense output in expectation; see module doc."""
    wd = w_dense.double()
    w = w_pruned.double().clone()
    same_sign = pattern.is_nm if same_sign is None else same_sign
    sq = stats.column_sq_norm().to(wd)
    mu = stats.column_mean().to(wd) * stats.tokens_per_sample()
    var = stats.column_within_sample_var().to(wd)
    var = var.clamp_min(1e-12 * float(var.max().clamp_min(1e-30)))
    importance = w.abs() * sq.sqrt()[None, :]  # Wanda's score of the kept weights
    grow_gain = wd * mu[None, :]  # reviving j lowers e_r by this
    drop_gain = w * mu[None, :]  # pruning k raises e_r by this
    grow_score = grow_gain.abs() / var[None, :] ** var_power
    pruned0 = w == 0
    rows = torch.arange(w.shape[0], device=w.device)
    # Candidate lists, each walked once from its start: [0] while e_r > 0 (pruning: e_r ≥ 0), [1] otherwise.
    grow_lists = [_walk_order(-grow_score, pruned0 & (grow_gain > 0)),
                  _walk_order(-grow_score, pruned0 & (grow_gain < 0))]
    drop_lists = [_walk_order(importance, ~pruned0 & (drop_gain < 0)),
                  _walk_order(importance, ~pruned0 & (drop_gain > 0))]
    grow_at = torch.zeros(2, w.shape[0], dtype=torch.long, device=w.device)
    drop_at = torch.zeros_like(grow_at)
    if pattern.is_nm:
        group = torch.arange(w.shape[1], device=w.device) // pattern.m
        droppable = ~pruned0  # initially kept and not pruned yet
    e = (wd - w) @ mu
    sign0 = torch.sign(e)
    if hessian is not None:
        h = hessian.to(wd)
        hd = (wd - w) @ h  # H (Ŵ_r − W_r) per row, updated with each swap
    live = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
    last = w.shape[1] - 1

    def next_in(lists, side, at):  # the candidate each row's pointer is at in list ``side`` (0 or 1), and validity
        pos = at[side, rows]
        col = pos.clamp_max(last)
        candidate = torch.where(side == 0, lists[0][0][rows, col], lists[1][0][rows, col])
        return candidate, pos < torch.where(side == 0, lists[0][1], lists[1][1])

    for _ in range(max_cycles):
        live &= e.abs() > threshold
        if not live.any():
            break
        side = (e <= 0).long()  # grow list 0 while e_r > 0
        g, valid = next_in(grow_lists, side, grow_at)
        if pattern.is_nm:
            in_group = droppable & (group[None, :] == group[g][:, None])
            k = importance.masked_fill(~in_group, float("inf")).argmin(dim=1)
            valid &= in_group.any(dim=1)
        else:
            dside = (e < 0).long()  # drop list 0 (W_rk E[x_k] < 0) while e_r ≥ 0
            k, dvalid = next_in(drop_lists, dside, drop_at)
            valid &= dvalid
        e_new = e - grow_gain[rows, g] + drop_gain[rows, k]
        accept = live & valid
        if same_sign:
            accept &= torch.sign(e_new) == sign0
        if hessian is not None:  # reviving g changes d_g by a, pruning k changes d_k by b (d = Ŵ − W)
            a, b = -(wd - w)[rows, g], w[rows, k]
            change = (2 * a * hd[rows, g] + a * a * h[g, g] + 2 * b * hd[rows, k] + b * b * h[k, k]
                      + 2 * a * b * h[g, k])
            accept &= change < 0
        live &= accept
        r = rows[accept]
        if not len(r):
            break
        if hessian is not None:
            hd[r] += a[accept, None] * h[g[accept]] + b[accept, None] * h[k[accept]]
        grow_at[side[accept], r] += 1
        if pattern.is_nm:
            droppable[r, k[accept]] = False
        else:
            drop_at[dside[accept], r] += 1
        w[r, g[accept]] = wd[r, g[accept]]
        w[r, k[accept]] = 0.0
        e = torch.where(accept, e_new, e)
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


def _refine_step(solve: LayerSolve, guarded: bool) -> None:
    hessian = solve.stats.require_hessian() if guarded else None
    solve.weight = dsnot_refine(solve.dense, solve.weight, solve.stats, solve.pattern, hessian=hessian)


register_step(PostStep("dsnot", "refine", frozenset({"sq_norm", "mean"}), lambda s: _refine_step(s, False),
                       "revise any method's mask with DSnoT (no weight updates)"))
register_step(PostStep("dsnot-h", "refine", frozenset({"sq_norm", "mean", "hessian"}), lambda s: _refine_step(s, True),
                       "DSnoT moves kept only when they lower the row's true reconstruction error (XᵀX)"))
