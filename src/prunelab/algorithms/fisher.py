"""Diagonal-Fisher importance, as elastic weight consolidation weighs parameters (Kirkpatrick et al., PNAS 2017)
and Fisher pruning removes them (Theis et al., arXiv 1801.05787; the diagonal-Fisher OBD/OBS saliency).

With the empirical Fisher F_ij = E_s[(∂L_s/∂w_ij)²] as the diagonal of the loss Hessian, zeroing w_ij costs about
½ F_ij w_ij² of calibration loss, so the score is

    w_ij² · E_s[(∂L_s/∂w_ij)²],     L_s = mean next-token NLL of calibration sequence s,

each sequence's own gradient on the dense model (the engine's ``grad_sq`` statistic, engine/gradients.py).
Pruned per output row by default, as Wanda.
"""
from dataclasses import dataclass

from .base import PruningAlgorithm, register


@register
@dataclass
class Fisher(PruningAlgorithm):
    name = "fisher"
    needs = frozenset({"grad_sq"})
    default_scope = "row"

    def scores(self, weight, stats):
        return weight * weight * stats.mean_grad_sq().to(weight)
