"""ALPS (Meng, Behdin, Wang & Mazumder, NeurIPS 2024, arXiv 2406.07831): ADMM for the support, PCG for the values.

Problem: min_W ½‖XŴ − XW‖²_F subject to W following the pattern (Ŵ dense, H = XᵀX). Inputs are first rescaled
by s = sqrt(diag H): H̃ = D⁻¹HD⁻¹ (unit diagonal) and Ŵ̃ = ŴD, which leaves the objective unchanged, puts every
column on one scale and makes the magnitude projection below Wanda-like. ADMM on the split W = Z (Z sparse):

    W ← (Ŵ̃H̃ − V + ρZ)(H̃ + ρI)⁻¹ = (Ŵ̃H̃ − V + ρZ) Q diag(1/(λ+ρ)) Qᵀ    (H̃ = Q diag(λ) Qᵀ, one eigh per layer)
    Z ← Π(W + V/ρ)        the pattern projection: keep the largest magnitudes (layer / row / N of M per group)
    V ← V + ρ(W − Z)

ρ starts at ``rho0`` (on H̃'s unit-diagonal scale) and every ``rho_every`` iterations is multiplied by 1.3, 1.2
or 1.1 when the support changes in that window were ≥ 10 %, ≥ 0.5 % or < 0.5 % of the kept weights: a fast
increase while the support is still moving, a gentle one once it settles, so ADMM converges (the paper's
ρ-update scheme; the thresholds are ours). It stops once the support of Z has not changed for ``patience``
iterations, or after ``max_iters``. The values on the final support are then the exact least-squares optimum,
found by PCG (refit.py) warm-started from Z. ``last_trace`` holds the support changes of each iteration.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..patterns import Pattern, select_pruned
from .base import PruningAlgorithm, one_cpu_thread, register
from .refit import refit_on_support


def project(z: torch.Tensor, pattern: Pattern, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean projection of ``z`` onto the pattern: (projected z, pruned mask). Weights in ``prior`` (already
    pruned) are pruned first and always: the projection onto the pattern restricted to their complement."""
    if prior is None:
        pruned = select_pruned(z.abs(), pattern)
    else:
        pruned = select_pruned(z.abs().masked_fill(prior, float("-inf")), pattern) | prior
    return z.masked_fill(pruned, 0.0), pruned


@register
@dataclass
class ALPS(PruningAlgorithm):
    name = "alps"
    needs = frozenset({"hessian"})
    rho0: float = 0.1
    max_iters: int = 300
    rho_every: int = 3
    patience: int = 3
    pcg_iters: int = 50
    pcg_tol: float = 1e-6
    last_trace: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.rho0 <= 0 or self.max_iters < 1 or self.rho_every < 1 or self.patience < 1 or self.pcg_iters < 0:
            raise ValueError("alps needs rho0 > 0, max_iters, rho_every, patience >= 1 and pcg_iters >= 0")

    def options(self) -> dict:
        opts = super().options()
        opts.pop("last_trace", None)
        opts.pop("_eig_cache", None)
        return opts

    def _preconditioned_eigh(self, h: torch.Tensor):
        """Scale, H̃ and its eigendecomposition; memoised on the Hessian object, which layers fed the same
        input (q/k/v, gate/up) share, so each distinct input costs one eigh."""
        cached = getattr(self, "_eig_cache", None)
        if cached is not None and cached[0] is h:
            return cached[1]
        diag = torch.diagonal(h).double()
        scale = torch.where(diag > 0, diag.sqrt(), torch.ones_like(diag))  # dead inputs: left unscaled
        h_tilde = h.double() / scale[:, None] / scale[None, :]
        with one_cpu_thread(h_tilde.device):  # the same eigenvectors for any thread count
            eigvals, q = torch.linalg.eigh(h_tilde)
        result = (scale.float(), h_tilde.float(), eigvals.clamp_min(0).float(), q.float())
        self._eig_cache = (h, result)
        return result

    def prune(self, weight: torch.Tensor, stats, pattern: Pattern, prior: torch.Tensor | None = None) -> torch.Tensor:
        h = stats.require_hessian().to(weight.device)
        w_dense = weight.float()
        scale, h_tilde, eigvals, q = self._preconditioned_eigh(h)
        w_hat = w_dense * scale[None, :]
        g = w_hat @ h_tilde  # Ŵ̃H̃, fixed across iterations

        z, pruned = project(w_hat, pattern, prior)
        v = torch.zeros_like(w_hat)
        rho = self.rho0
        kept = max(int(torch.count_nonzero(~pruned)), 1)
        window, quiet = 0, 0
        self.last_trace = []
        for it in range(1, self.max_iters + 1):
            w = (((g - v + rho * z) @ q) / (eigvals + rho)[None, :]) @ q.T
            z, new_pruned = project(w + v / rho, pattern, prior)
            v.add_(w - z, alpha=rho)
            changes = int(torch.count_nonzero(new_pruned != pruned))
            pruned = new_pruned
            self.last_trace.append(changes)
            window += changes
            quiet = quiet + 1 if changes == 0 else 0
            if quiet >= self.patience:
                break
            if it % self.rho_every == 0:
                rho *= 1.3 if window >= 0.1 * kept else 1.2 if window >= 0.005 * kept else 1.1
                window = 0

        keep = ~pruned
        return refit_on_support(w_dense, h.float(), keep, iters=self.pcg_iters, tol=self.pcg_tol,
                                w0=z / scale[None, :])
