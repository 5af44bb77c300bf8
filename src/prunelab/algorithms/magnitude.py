"""Magnitude pruning: drop the weights of smallest |w| (Han et al., 2015). Needs no calibration data."""
from dataclasses import dataclass

import torch

from .base import PruningAlgorithm, register


@register
@dataclass
class Magnitude(PruningAlgorithm):
    name = "magnitude"
    scopes = ("layer", "row", "global")

    def scores(self, weight, stats=None):
        return weight.abs()


@register
@dataclass
class NegativeMagnitude(PruningAlgorithm):
    """Indicator ablation from seed 000: prune the *largest* weights first (score −|w|)."""
    name = "neg-magnitude"
    scopes = ("layer", "row", "global")

    def scores(self, weight, stats=None):
        return -weight.abs()


@register
@dataclass
class Random(PruningAlgorithm):
    """Uniformly random mask (a floor every method must beat); deterministic for a seed and layer shape."""
    name = "random"
    seed: int = 0

    def scores(self, weight, stats=None):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + weight.numel())
        return torch.rand(weight.shape, generator=g).to(weight.device)
