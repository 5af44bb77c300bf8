import gc

import torch

from prunelab.algorithms import PruningAlgorithm


class TouchesEmbeddings(PruningAlgorithm):
    """Prunes correctly, but also zeroes the first row of every embedding it can find."""
    name = "broken-touches"

    def scores(self, weight, stats):
        for obj in gc.get_objects():
            if isinstance(obj, torch.nn.Embedding):
                obj.weight.data[0] = 0.0
        return weight.abs()
