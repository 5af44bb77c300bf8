"""Variational dropout pruning (Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural
Networks", ICML 2017), on one layer's reconstruction loss instead of a training loss.

Each weight gets multiplicative Gaussian noise, W̃_ij = θ_ij (1 + √α_ij ε_ij), and θ and log α are fitted to

    F(θ, α) = E_ε‖X W̃ᵀ − X Ŵᵀ‖² / Z + β · mean_ij KL(α_ij),      Z = ‖X Ŵᵀ‖²_F,

where the expectation over the noise is exact, from H = XᵀX (no sampling, so the result is deterministic):
E‖X(W̃ − Ŵ)ᵀ‖² = tr((θ − Ŵ) H (θ − Ŵ)ᵀ) + Σ_ij α_ij θ²_ij H_jj, and KL is the paper's approximation of the KL to
the log-uniform prior, KL(α) ≈ k₁ − k₁·sigmoid(k₂ + k₃ log α) + ½ log(1 + 1/α) (k = 0.63576, 1.87320, 1.48695).

The optimisation is short and bounded: starting from θ = Ŵ, ``steps`` rounds of block-coordinate descent, each
(1) the exact minimiser in log α ∈ [−20, 20] of every weight for the current θ (a 1-D unimodal problem per
weight whose stationarity condition has an explicit inverse, see ``best_log_alpha``) and (2) ``inner`` preconditioned conjugate-gradient iterations on θ for the
current α (a quadratic: (θ − Ŵ)H + diag(α ⊙ H_jj)θ = 0 row by row, Jacobi-preconditioned, warm-started), then a
final (1). F never increases. Weights of highest log α are pruned; the kept ones keep their dense values (add
--refit for least-squares values). The optimal log α is a decreasing function of c = θ²H_jj alone (step (1)), but
it saturates at the range's upper end once θ has shrunk, and on real layers over half a row can tie there (a tie
broken by position made 50% vardrop worse than magnitude on SmolLM2), so the score is c at the final θ: the same
order as −log α wherever that is strict, and no ties. Per output row by default, as Wanda. Cost: ``steps`` × ``inner``
products (out × in)·(in × in).

β sets how many weights the noise takes over, so it is chosen per layer from the target sparsity s (``beta=None``,
the default): the value for which, at θ = Ŵ, exactly a fraction s of the weights has optimal log α above
``log_alpha_at`` = −3 (by step (1)'s monotonicity, a closed form in the s-quantile of c; see ``beta_for_target``).
Measured on SmolLM2's first two blocks (C4 64 x 512; relative reconstruction error of all 14 layers, mean): at 50%,
the fixed β = 1 used before gave 0.217 (Wanda 0.129), the paper's own threshold log α = 3 here 0.399, 0 gave
0.172, −3 gave 0.121, best on 14 of 14 layers; at 70%, −3 gave 0.221, −5 0.235, Wanda 0.238. The paper's
log α > 3 rule belongs to its training loss; on a layer's reconstruction loss it lets the noise shrink nearly every
weight. A float ``beta`` fixes β for every layer instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import PruningAlgorithm, prune_by_scores, register

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_RANGE = (-20.0, 20.0)


def kl_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al.'s approximation of KL(q(w | θ, α) ‖ log-uniform prior), per weight."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * torch.nn.functional.softplus(-log_alpha)


def kl_slope(log_alpha: torch.Tensor) -> torch.Tensor:
    """d KL / d log α (negative: a larger α always costs less KL)."""
    s = torch.sigmoid(K2 + K3 * log_alpha)
    return -K1 * K3 * s * (1 - s) - 0.5 * torch.sigmoid(-log_alpha)


def objective(theta, log_alpha, w_hat, h, z, beta) -> torch.Tensor:
    """F(θ, α) of the module doc."""
    d = theta - w_hat
    noise = (log_alpha.exp() * theta ** 2 * torch.diagonal(h)[None, :]).sum()
    return (((d @ h) * d).sum() + noise) / z + beta * kl_approx(log_alpha).mean()


def best_log_alpha(c: torch.Tensor, k: float, points: int = 40001) -> torch.Tensor:
    """argmin over a ∈ [−20, 20] of h(a) = e^a·c + k·KL(a), per entry (c = θ²H_jj/Z ≥ 0, k = β/N).

    h'(a) = 0 ⇔ log c = log k + log(−KL'(a)) − a =: L(a), and log(−KL') grows by at most 0.16 per unit of a, so
    L is strictly decreasing: h is unimodal and its minimiser is L⁻¹(log c). L is tabulated on ``points``
    values of a (step 0.001) and inverted by interpolation; beyond the table's ends a is clamped (c = 0: +20)."""
    a = torch.linspace(*LOG_ALPHA_RANGE, points, dtype=torch.float64)
    level = (math.log(k) + torch.log(-kl_slope(a)) - a).flip(0).to(c.device, c.dtype)  # increasing
    a = a.flip(0).to(c.device, c.dtype)
    x = torch.log(c).clamp_(float(level[0]), float(level[-1]))  # log 0 = −inf: clamped to the table's end
    i = torch.searchsorted(level, x).clamp_(1, points - 1)
    lo, hi = level[i - 1], level[i]
    return torch.lerp(a[i - 1], a[i], (x - lo) / (hi - lo))


def learn_log_alpha(w_hat: torch.Tensor, h: torch.Tensor, steps: int, inner: int, beta: float,
                    trace: bool = False):
    """(log α, θ) after the optimisation and, with ``trace``, F after each (1) step (the first: at θ = Ŵ)."""
    diag = torch.diagonal(h)[None, :]
    z = float(((w_hat @ h) * w_hat).sum().clamp_min(1e-30))
    k = beta / w_hat.numel()
    theta = w_hat.clone()
    log_alpha = best_log_alpha(theta ** 2 * diag / z, k)
    values = [float(objective(theta, log_alpha, w_hat, h, z, beta))] if trace else []
    for _ in range(steps):
        # θ-step: PCG on the quadratic (θ − Ŵ)H + α ⊙ θ ⊙ H_jj = 0, all rows at once with per-row step sizes
        ridge = log_alpha.exp() * diag
        precond = 1.0 / (diag + ridge).clamp_min(1e-30)
        r = (w_hat - theta) @ h - ridge * theta  # minus the gradient / 2
        p = precond * r
        rz = (r * p).sum(dim=1)
        for _ in range(inner):
            ap = p @ h + ridge * p
            pap = (p * ap).sum(dim=1)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(pap))
            theta = theta + alpha[:, None] * p
            r = r - alpha[:, None] * ap
            zr = precond * r
            rz_new = (r * zr).sum(dim=1)
            p = zr + torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))[:, None] * p
            rz = rz_new
        log_alpha = best_log_alpha(theta ** 2 * diag / z, k)
        if trace:
            values.append(float(objective(theta, log_alpha, w_hat, h, z, beta)))
    return log_alpha, theta, values


def beta_for_target(w_hat: torch.Tensor, h: torch.Tensor, sparsity: float, log_alpha_at: float) -> float:
    """β for which, at θ = Ŵ, a fraction ``sparsity`` of the weights has optimal log α > ``log_alpha_at``.

    Step (1) gives log α > a exactly when c < c_a, with log c_a = log k + log(−KL'(a)) − a (``best_log_alpha``);
    setting c_a to the s-quantile of c = Ŵ²H_jj/Z gives k, and β = k·N."""
    c = (w_hat ** 2 * torch.diagonal(h)[None, :]).flatten() / float(((w_hat @ h) * w_hat).sum().clamp_min(1e-30))
    index = min(max(1, round(sparsity * c.numel())), c.numel())
    c_s = max(float(torch.kthvalue(c.double(), index).values), 1e-30)  # kthvalue: exact, any size
    slope = -float(kl_slope(torch.tensor(log_alpha_at, dtype=torch.float64)))
    return c_s * math.exp(log_alpha_at) / slope * c.numel()


@register
@dataclass
class VariationalDropout(PruningAlgorithm):
    name = "vardrop"
    needs = frozenset({"hessian"})
    default_scope = "row"
    steps: int = 10
    inner: int = 3
    beta: float | None = None  # None: per layer from the target sparsity (module doc)
    log_alpha_at: float = -3.0

    def __post_init__(self):
        if self.steps < 0 or self.inner < 1 or (self.beta is not None and self.beta <= 0):
            raise ValueError("vardrop needs steps >= 0, inner >= 1 and beta > 0 (or unset: chosen per layer)")

    def _scores(self, weight, stats, sparsity: float):
        h = stats.require_hessian().to(weight.device).float()
        w = weight.float()
        beta = self.beta if self.beta is not None else beta_for_target(w, h, sparsity, self.log_alpha_at)
        _, theta, _ = learn_log_alpha(w, h, self.steps, self.inner, beta)
        return theta.square() * torch.diagonal(h)[None, :]  # orders as −log α, without its saturation (module doc)

    def scores(self, weight, stats):
        """Scores without a target (a caller that ranks by itself): β as for 50%."""
        return self._scores(weight, stats, 0.5)

    def prune(self, weight, stats, pattern, prior=None):
        return prune_by_scores(weight, self._scores(weight, stats, pattern.target_sparsity), pattern, prior)
