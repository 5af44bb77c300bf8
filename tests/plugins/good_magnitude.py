"""A valid plug-in: magnitude pruning written against the public contract (scores only)."""
from prunelab.algorithms import PruningAlgorithm


class PluginMagnitude(PruningAlgorithm):
    name = "plugin-magnitude"

    def scores(self, weight, stats):
        return weight.abs()
