import os

import torch

from prunelab.algorithms import PruningAlgorithm


class Unseeded(PruningAlgorithm):
    """Random scores from the operating system's entropy: ignores every seed."""
    name = "broken-nondeterministic"

    def scores(self, weight, stats):
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") % 2**63)
        return torch.rand(weight.shape, generator=g)
