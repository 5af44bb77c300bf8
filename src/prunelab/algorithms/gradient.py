"""Gradient-based pruning, GBLM-Pruner (Das, Sun, Ma & Shen, arXiv 2311.04902): Wanda's score plus a gradient term,

    |w_ij| · ‖X_j‖₂  +  α · |w_ij| · ‖G_ij‖₂,      ‖G_ij‖₂ = sqrt(Σ_s (∂L_s/∂w_ij)²),

with ‖G_ij‖₂ the ℓ2 norm over calibration sequences of each sequence's gradient (L_s: its mean next-token NLL,
on the dense model; the engine's ``grad_sq``) and ‖X_j‖₂² = Σ_tokens x_j² / n_sequences, the input norm as
Wanda's code keeps it (its ``scaler_row``), so that ``alpha`` = 100 weighs the two terms as the paper does.
Pruned per output row by default, as Wanda and GBLM.
"""
from dataclasses import dataclass

from .base import PruningAlgorithm, register


@register
@dataclass
class GradientGBLM(PruningAlgorithm):
    name = "gradient"
    needs = frozenset({"sq_norm", "grad_sq"})
    default_scope = "row"
    alpha: float = 100.0

    def __post_init__(self):
        if self.alpha < 0:
            raise ValueError("gradient needs alpha >= 0")

    def scores(self, weight, stats):
        x_norm = (stats.column_sq_norm() / max(stats.n_samples, 1)).sqrt().to(weight)
        g_norm = stats.get("grad_sq").sqrt().to(weight)
        return weight.abs() * (x_norm[None, :] + self.alpha * g_norm)
