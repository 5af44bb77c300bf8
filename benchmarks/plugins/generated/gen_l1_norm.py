"""Table 4, idea 02 (L1 Norm Pruning), generated in one pass: prune the weights whose output row has the smallest
L1 norm first, then by magnitude inside the row."""
import torch

from prunelab.algorithms import PruningAlgorithm


class GeneratedL1Norm(PruningAlgorithm):
    name = "gen-l1-norm"

    def scores(self, weight, stats):
        row_l1 = weight.abs().sum(dim=1, keepdim=True)
        row_l1 = row_l1 / row_l1.max()
        return row_l1 + weight.abs() / (weight.abs().max() + 1e-12) * 1e-3
