from prunelab.algorithms import PruningAlgorithm
from prunelab.patterns import Pattern, select_pruned


class IgnoresNM(PruningAlgorithm):
    """Always prunes the layer's smallest half, whatever the pattern: right count for 2:4, wrong groups."""
    name = "broken-nm"

    def prune(self, weight, stats, pattern):
        return weight.masked_fill(select_pruned(weight.abs(), Pattern(pattern.target_sparsity)), 0.0)
