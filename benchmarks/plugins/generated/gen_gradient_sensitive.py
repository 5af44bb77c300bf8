"""Table 4, idea 01 (Gradient Sensitive Pruning), generated in one pass: a weight is important when the loss is
sensitive to it, |w * dL/dw|, using the calibration gradients the engine provides."""
from prunelab.algorithms import PruningAlgorithm


class GeneratedGradientSensitive(PruningAlgorithm):
    name = "gen-gradient-sensitive"
    needs = frozenset({"grad"})
    default_scope = "row"

    def scores(self, weight, stats):
        grad = stats.grad
        return (weight * grad).abs()
