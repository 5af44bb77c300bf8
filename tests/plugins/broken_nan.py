from prunelab.algorithms import PruningAlgorithm
from prunelab.patterns import select_pruned


class MakesNaN(PruningAlgorithm):
    name = "broken-nan"

    def prune(self, weight, stats, pattern):
        out = weight.masked_fill(select_pruned(weight.abs(), pattern), 0.0)
        out[0, 0] = float("nan")
        return out
