"""Wanda (Sun et al., 2023, arXiv 2306.11695): score |W_ij| · ‖X_j‖₂, pruned per output row by default."""
from dataclasses import dataclass

from .base import PruningAlgorithm, register


@register
@dataclass
class Wanda(PruningAlgorithm):
    name = "wanda"
    needs = frozenset({"sq_norm"})
    default_scope = "row"

    def scores(self, weight, stats):
        return weight.abs() * stats.column_sq_norm().sqrt().to(weight)[None, :]
