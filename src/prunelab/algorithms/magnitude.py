"""Magnitude pruning: drop the weights of smallest |w| (Han et al., 2015). Needs no calibration data."""
import hashlib
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
    """Uniformly random mask (a floor every method must beat); deterministic for a seed and the layer's weights.

    The generator is seeded from ``seed`` and a hash of the weight, so layers of the same shape (q_proj, o_proj)
    get independent masks and a rerun gets the same ones."""
    name = "random"
    seed: int = 0

    def scores(self, weight, stats=None):
        digest = hashlib.blake2b(weight.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=8)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + int.from_bytes(digest.digest(), "little")) % 2 ** 63)
        return torch.rand(weight.shape, generator=g).to(weight.device)
