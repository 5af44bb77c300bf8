"""Least-squares refit of a pruned layer on a fixed support, by preconditioned conjugate gradient (PCG).

For a kept-mask M (True = kept) the best weights are min_W ‖XŴ − XW‖²_F subject to W = 0 outside M. Rows
are independent: with S the kept columns of row r, the optimum solves H_SS w_S = (ŴH)_{r,S}, H = XᵀX.
Instead of one solve per row, PCG runs on all rows at once with the masked operator P ↦ ((P ⊙ M) H) ⊙ M,
a Jacobi preconditioner diag H, and its own step sizes per row, so each iteration is one (out × in)·(in × in)
matmul. Used by ALPS (Meng et al., 2024) as its post-processing step, and usable after any mask.
"""
from __future__ import annotations

import torch

from ..steps import LayerSolve, PostStep, register_step


def refit_on_support(w_dense: torch.Tensor, hessian: torch.Tensor, keep_mask: torch.Tensor, iters: int = 100,
                     tol: float = 1e-6, w0: torch.Tensor | None = None, dampening: float = 1e-6) -> torch.Tensor:
    """Weights on ``keep_mask`` minimising ‖XŴ − XW‖²_F, exactly zero elsewhere.

    ``w0`` (default: the dense weights) warm-starts the iteration; only its kept entries matter. Each row stops
    once ‖residual‖ ≤ tol·‖right-hand side‖. ``dampening`` adds λ = dampening·mean(diag H) to the kept diagonal
    (a guard for rank-deficient H). Inputs with diag H = 0 carry no signal: their kept weights stay at ``w0``.
    Works in the dtype of ``w_dense``/``hessian`` promoted (fp32 for the engine; fp64 gives tighter answers).
    """
    dtype = torch.promote_types(w_dense.dtype, hessian.dtype)
    h = hessian.to(dtype)
    keep = keep_mask.to(device=w_dense.device, dtype=dtype)
    diag = torch.diagonal(h)
    lam = dampening * diag.mean().clamp_min(0)
    precond = torch.where(diag > 0, 1.0 / (diag + lam), torch.zeros_like(diag))[None, :] * keep

    def apply(p):  # ((P ⊙ M) H + λP) ⊙ M; P is already zero outside M
        return (p @ h + lam * p) * keep

    x = (w_dense if w0 is None else w0).to(dtype) * keep
    b = (w_dense.to(dtype) @ h) * keep
    r = (b - apply(x)) * (precond > 0)  # dead inputs are frozen: their residual is dropped
    b_norm = b.norm(dim=1)
    z = precond * r
    p = z.clone()
    rz = (r * z).sum(dim=1)
    active = r.norm(dim=1) > tol * b_norm
    for _ in range(iters):
        if not active.any():
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=1)
        alpha = torch.where(active & (pap > 0), rz / pap.where(pap > 0, torch.ones_like(pap)), torch.zeros_like(pap))
        x.add_(alpha[:, None] * p)
        r.sub_(alpha[:, None] * ap)
        active &= (r.norm(dim=1) > tol * b_norm) & (pap > 0)
        z = precond * r
        rz_new = (r * z).sum(dim=1)
        beta = torch.where(active & (rz > 0), rz_new / rz.where(rz > 0, torch.ones_like(rz)), torch.zeros_like(rz))
        p = z + beta[:, None] * p
        p[~active] = 0.0
        rz = rz_new
    return (x * keep).to(w_dense.dtype)


def _refit_step(solve: LayerSolve) -> None:
    solve.weight = refit_on_support(solve.dense, solve.stats.require_hessian(), solve.weight != 0, w0=solve.weight)


register_step(PostStep("refit", "refit", frozenset({"hessian"}), _refit_step,
                       "least-squares weights on the final support (PCG)"))
