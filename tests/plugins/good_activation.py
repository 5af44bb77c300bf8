"""A valid plug-in that asks for statistics and writes its own prune() with row-wise selection."""
from prunelab.algorithms import PruningAlgorithm
from prunelab.patterns import select_pruned


class PluginActivation(PruningAlgorithm):
    name = "plugin-activation"
    needs = frozenset({"sq_norm"})
    default_scope = "row"

    def prune(self, weight, stats, pattern):
        print("printing to stdout must not confuse the gate")
        score = weight.abs() * stats.column_sq_norm().sqrt()[None, :]
        return weight.masked_fill(select_pruned(score, pattern), 0.0)
