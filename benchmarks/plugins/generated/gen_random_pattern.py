"""Table 4, idea 06 (Random Pattern Pruning), generated in one pass: pick a random pattern of weights to remove,
the same pattern for every row so that it is hardware friendly."""
import torch

from prunelab.algorithms import PruningAlgorithm


class GeneratedRandomPattern(PruningAlgorithm):
    name = "gen-random-pattern"
    seed = 0

    def prune(self, weight, stats, pattern):
        generator = torch.Generator().manual_seed(self.seed)
        columns = weight.shape[1]
        n_prune = int(columns * pattern.target_sparsity)
        pruned_columns = torch.randperm(columns, generator=generator)[:n_prune]
        out = weight.clone()
        out[:, pruned_columns] = 0
        return out
