"""Variational dropout pruning (Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural
Networks", ICML 2017), on one layer's reconstruction loss instead of a training loss.

Each weight gets multiplicative Gaussian noise, W̃_ij = θ_ij + σ_ij ε_ij (α_ij = σ²_ij / θ²_ij), and θ and
log σ² (the paper's additive reparameterisation) are learned for ``steps`` Adam steps of learning rate ``lr`` on

    E_ε‖X W̃ᵀ − X Ŵᵀ‖² / Z + β · mean_ij KL(α_ij),     Z = ‖X Ŵᵀ‖²_F,

where the expectation over the noise is exact, from H = XᵀX (no sampling, so the result is deterministic):
E‖X(W̃ − Ŵ)ᵀ‖² = tr((θ − Ŵ) H (θ − Ŵ)ᵀ) + Σ_ij σ²_ij H_jj, and KL is the paper's approximation
KL ≈ k₁ − k₁·sigmoid(k₂ + k₃ log α) + ½ log(1 + 1/α) (k = 0.63576, 1.87320, 1.48695). θ starts at Ŵ and
log α at ``log_alpha0``. Weights of highest log α are pruned (score −log α); the kept ones keep their dense
values (add --refit for least-squares values). Inputs are on the layer's scale (θ in units of rms(Ŵ)) so
``lr`` means the same in every layer. Cost: one (out × in)·(in × in) product per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PruningAlgorithm, register

K1, K2, K3 = 0.63576, 1.87320, 1.48695
EPS = 1e-16  # keeps log θ² finite when a weight is driven to zero (then log α is huge: pruned first)


def kl_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al.'s approximation of KL(q(w | θ, α) ‖ log-uniform prior), per weight."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * torch.nn.functional.softplus(-log_alpha)


def expected_reconstruction(theta, log_sigma2, w_hat, h) -> torch.Tensor:
    """E_ε‖X(W̃ − Ŵ)ᵀ‖²_F from H = XᵀX, W̃ = θ + σ ⊙ ε, ε standard normal, independent."""
    d = theta - w_hat
    return ((d @ h) * d).sum() + (log_sigma2.exp() * torch.diagonal(h)[None, :]).sum()


def learn_log_alpha(w_hat: torch.Tensor, h: torch.Tensor, steps: int, lr: float, beta: float,
                    log_alpha0: float) -> tuple[torch.Tensor, list[float]]:
    """log α after the optimisation, and the objective before each step (and after the last)."""
    scale = w_hat.pow(2).mean().sqrt().clamp_min(1e-30)
    target = w_hat / scale
    z = ((target @ h) * target).sum().clamp_min(1e-30)
    theta = target.clone().requires_grad_(True)
    log_sigma2 = (log_alpha0 + torch.log(target ** 2 + EPS)).requires_grad_(True)
    optimizer = torch.optim.Adam([theta, log_sigma2], lr=lr)
    diag = torch.diagonal(h)[None, :]
    losses = []
    for _ in range(steps + 1):
        optimizer.zero_grad()
        log_alpha = log_sigma2 - torch.log(theta ** 2 + EPS)
        rest = (log_sigma2.exp() * diag).sum() / z + beta * kl_approx(log_alpha).mean()
        d = theta.detach() - target
        dh = d @ h
        losses.append(float(((dh * d).sum() / z + rest).detach()))
        if len(losses) > steps:
            break
        rest.backward()
        theta.grad.add_(dh, alpha=2.0 / float(z))  # ∂ tr(D H Dᵀ)/∂θ = 2 D H (H symmetric), without autograd's 2nd product
        optimizer.step()
    return (log_sigma2 - torch.log(theta ** 2 + EPS)).detach(), losses


@register
@dataclass
class VariationalDropout(PruningAlgorithm):
    name = "vardrop"
    needs = frozenset({"hessian"})
    steps: int = 50
    lr: float = 0.05
    beta: float = 1.0
    log_alpha0: float = -8.0

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.beta < 0:
            raise ValueError("vardrop needs steps >= 1, lr > 0 and beta >= 0")

    def scores(self, weight, stats):
        h = stats.require_hessian().to(weight.device).float()
        log_alpha, _ = learn_log_alpha(weight.float(), h, self.steps, self.lr, self.beta, self.log_alpha0)
        return -log_alpha
