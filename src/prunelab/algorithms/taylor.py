"""First-order Taylor importance (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019;
element-wise in LLM-Pruner, Ma et al., NeurIPS 2023, arXiv 2305.11627).

Zeroing w_ij changes the calibration loss L by about −w_ij · ∂L/∂w_ij (first order), so the score is

    |w_ij · E_s[∂L_s/∂w_ij]|,     L_s = mean next-token NLL of calibration sequence s,

the gradient taken on the dense model (the engine's ``grad`` statistic, engine/gradients.py). Pruned per output
row by default, as Wanda. At a well-trained minimum E[∂L/∂w] is small and noisy, which is what makes this
criterion weak in the literature; it is kept as specified, and measured.
"""
from dataclasses import dataclass

from .base import PruningAlgorithm, register


@register
@dataclass
class Taylor(PruningAlgorithm):
    name = "taylor"
    needs = frozenset({"grad"})
    default_scope = "row"

    def scores(self, weight, stats):
        return (weight * stats.mean_grad().to(weight)).abs()
