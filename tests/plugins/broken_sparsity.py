from prunelab.algorithms import PruningAlgorithm


class WrongSparsity(PruningAlgorithm):
    """Prunes only the weights below the median |w| of ... a fixed 30% instead of the target."""
    name = "broken-sparsity"

    def prune(self, weight, stats, pattern):
        threshold = weight.abs().flatten().kthvalue(int(0.3 * weight.numel())).values
        return weight.masked_fill(weight.abs() <= threshold, 0.0)
