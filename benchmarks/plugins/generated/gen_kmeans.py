"""Table 4, idea 04 (K-means Clustering Pruning), generated in one pass: cluster |w| of each layer into k groups
with k-means and prune the groups with the smallest centre until the target sparsity is reached."""
import torch

from prunelab.algorithms import PruningAlgorithm


class GeneratedKMeans(PruningAlgorithm):
    name = "gen-kmeans"
    k = 8
    iterations = 20

    def scores(self, weight, stats):
        values = weight.abs().flatten()
        centres = torch.linspace(values.min(), values.max(), self.k)
        for _ in range(self.iterations):
            labels = (values[:, None] - centres[None, :]).abs().argmin(dim=1)
            for c in range(self.k):
                members = values[labels == c]
                if len(members):
                    centres[c] = members.mean()
        # the score of a weight is the centre of its cluster, ties broken by the weight itself
        return (centres[labels] + 1e-6 * values).view_as(weight)
