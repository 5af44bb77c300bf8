"""K-means clustering pruning (seed 002, Table 4, idea 04), defined precisely here.

The weight values of each layer (layer scope) or of each output row (row scope and N:M) are clustered by 1-D
k-means: ``clusters`` centroids start at the (i + ½)/k quantiles of the values, then Lloyd iterations (assign
each value to its nearest centroid, ties to the lower one; move each centroid to its members' mean; an empty
cluster keeps its centroid) run until no assignment changes, at most ``iters`` times. Clusters are ordered by
|centroid|; weights are pruned whole cluster by whole cluster from the one nearest zero, and inside the cluster
where the target count falls, smallest |w| first, so the pattern's count is exact. The score is therefore
(rank of the weight's cluster by |centroid|, then |w|). Data-free, like magnitude; kept weights keep their
values (no quantisation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import Pattern, select_pruned
from .base import PruningAlgorithm, register


def kmeans_1d(values: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on each row of ``values`` (groups × n), in fp64: (centroids (groups × k), assignment).

    In 1-D the clusters of sorted centroids are the intervals between consecutive midpoints, so each iteration
    is a search of the midpoints in the sorted values plus prefix sums (exactly Lloyd's step, O(k log n))."""
    v = values.double()
    ordered = v.sort(dim=1).values
    prefix = torch.nn.functional.pad(ordered.cumsum(dim=1), (1, 0))
    # initial centroids: the (i + ½)/k quantiles, linearly interpolated as torch.quantile does (which refuses
    # more than 2^24 values, fewer than one large layer has)
    pos = (torch.arange(k, dtype=torch.float64, device=v.device) + 0.5) / k * (v.shape[1] - 1)
    lo = pos.floor().long().clamp_max(v.shape[1] - 1)
    hi = (lo + 1).clamp_max(v.shape[1] - 1)
    centroids = ordered[:, lo] + (pos - lo) * (ordered[:, hi] - ordered[:, lo])
    edges = None
    for _ in range(iters):
        mid = (centroids[:, 1:] + centroids[:, :-1]) / 2
        # a value equal to a midpoint goes to the lower centroid (argmin's first-of-ties)
        cut = torch.searchsorted(ordered, mid.contiguous(), right=True)
        new_edges = torch.nn.functional.pad(cut, (1, 0), value=0)
        new_edges = torch.cat([new_edges, torch.full_like(cut[:, :1], v.shape[1])], dim=1)
        if edges is not None and torch.equal(new_edges, edges):
            break
        edges = new_edges
        counts = (edges[:, 1:] - edges[:, :-1]).double()
        sums = prefix.gather(1, edges[:, 1:]) - prefix.gather(1, edges[:, :-1])
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    mid = (centroids[:, 1:] + centroids[:, :-1]) / 2
    return centroids, torch.searchsorted(mid.contiguous(), v.contiguous(), right=False)


@register
@dataclass
class KMeans(PruningAlgorithm):
    name = "kmeans"
    clusters: int = 16
    iters: int = 50

    def __post_init__(self):
        if self.clusters < 2 or self.iters < 1:
            raise ValueError("kmeans needs clusters >= 2 and iters >= 1")

    def prune(self, weight: torch.Tensor, stats, pattern: Pattern) -> torch.Tensor:
        per_row = pattern.is_nm or pattern.scope == "row"
        groups = weight if per_row else weight.reshape(1, -1)
        centroids, assign = kmeans_1d(groups, min(self.clusters, groups.shape[1]), self.iters)
        rank = torch.argsort(torch.argsort(centroids.abs(), dim=1, stable=True), dim=1).double()
        magnitude = groups.abs().double()
        fraction = magnitude / (magnitude.amax(dim=1, keepdim=True) * 1.001).clamp_min(1e-300)  # in [0, 1)
        scores = (rank.gather(1, assign) + fraction).reshape(weight.shape)
        return weight.masked_fill(select_pruned(scores, pattern), 0.0)
