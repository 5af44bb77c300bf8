"""Compensation after removing units: FLAP's mean bias, and the least-squares refit of the consumer.

The consumer sees inputs x (its calibration statistics: H = Σ xxᵀ, s = Σ x, N tokens) and must keep producing
W·x with only the kept columns K. A constant input 1 appended to x (the "augmented" H) turns a bias into one more
column, so the same formulas cover fits with and without a bias term.
"""
from __future__ import annotations

import torch


def augmented_hessian(hessian: torch.Tensor, mean_sum: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """E[zzᵀ]·N for z = [x; 1]: [[H, s], [sᵀ, N]] in fp64."""
    d = hessian.shape[0]
    h = hessian.new_zeros((d + 1, d + 1), dtype=torch.float64)
    h[:d, :d] = hessian.double()
    h[:d, d] = h[d, :d] = mean_sum.double()
    h[d, d] = float(n_tokens)
    return h


def flap_bias(consumer: torch.Tensor, mean: torch.Tensor, removed_cols: torch.Tensor) -> torch.Tensor:
    """FLAP's baseline compensation: the removed columns' mean contribution Σ_{j removed} W_:,j E[x_j]."""
    return consumer.double()[:, removed_cols] @ mean.double()[removed_cols]


def refit_consumer(consumer: torch.Tensor, hessian: torch.Tensor, keep_cols: torch.Tensor, dampening: float = 1e-4,
                   fit_bias_index: int | None = None) -> torch.Tensor:
    """Least-squares weights on the kept input columns: min ‖W x − Ŵ_K x_K‖² over calibration tokens, i.e.
    Ŵ_K = (W H_{:,K}) (H_KK + λI)⁻¹, λ = dampening·mean(diag H_KK) (ridge; a guard for rank-deficient H).

    ``hessian`` may be augmented (see augmented_hessian) with ``consumer`` padded by a zero column; then include
    its last index in ``keep_cols`` and pass it as ``fit_bias_index`` (not dampened): the fitted column is the bias.
    Returns (out, len(keep_cols)) in fp64. One Cholesky solve serves every output row (they share H_KK).
    """
    h = hessian.double()
    w = consumer.double()
    keep = torch.as_tensor(keep_cols, dtype=torch.long)
    h_kk = h[keep][:, keep].clone()
    diag = torch.diagonal(h_kk).clone()
    is_weight = keep != fit_bias_index if fit_bias_index is not None else torch.ones_like(keep, dtype=torch.bool)
    scale = float(diag[is_weight].mean()) if is_weight.any() else 0.0
    h_kk += torch.diag(dampening * scale * is_weight.double())
    dead = diag <= 0  # inputs that never fire: no signal to fit, weights set to 0
    h_kk[dead, dead] = 1.0
    rhs = w @ h[:, keep]
    rhs[:, dead] = 0.0
    chol = torch.linalg.cholesky(h_kk)
    return torch.cholesky_solve(rhs.T, chol).T


def relative_error(dense: torch.Tensor, pruned_full: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖(W − Ŵ)X‖_F / ‖W X‖_F from H = XᵀX (fp64), ``pruned_full`` with zero columns where units were removed.
    With an augmented H, pass both weights with one more column: 0 for W, the added bias for Ŵ."""
    h, w = hessian.double(), dense.double()
    diff = w - pruned_full.double()
    num = float(((diff @ h) * diff).sum().clamp_min(0))
    den = float(((w @ h) * w).sum())
    return (num / den) ** 0.5 if den > 0 else float("nan")
