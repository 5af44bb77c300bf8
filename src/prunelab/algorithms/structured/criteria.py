"""Importance of removable units (higher = keep): pure tensor math on their weights and input statistics.

A unit (an MLP channel, an attention head) is ``unit_size`` consecutive input columns of its consumer (down_proj,
o_proj, fc2, c_proj; weight ``consumer`` of shape (out, units·unit_size)) and the matching rows of each producer
(gate/up, q; ``producers`` of shape (units·unit_size, in)). Statistics are those of the consumer's input.
"""
from __future__ import annotations

import torch

from ...stats import LayerStats


def _per_unit(columns: torch.Tensor, unit_size: int) -> torch.Tensor:
    return columns.reshape(-1, unit_size).sum(dim=1)


def magnitude_scores(producers: list[torch.Tensor], consumer: torch.Tensor, unit_size: int,
                     stats: LayerStats | None = None) -> torch.Tensor:
    """L2 norm of all of a unit's weights: its producer rows and its consumer columns ("L1-norm pruning" family)."""
    sq = consumer.double().pow(2).sum(dim=0)
    for p in producers:
        sq = sq + p.double().pow(2).sum(dim=1)
    return _per_unit(sq, unit_size).sqrt()


def wanda_scores(producers, consumer: torch.Tensor, unit_size: int, stats: LayerStats) -> torch.Tensor:
    """Wanda-sp (An et al. 2024, the structured Wanda baseline): Σ_i |W_ij|·‖X_j‖₂ over the unit's columns j."""
    norms = stats.column_sq_norm().double().clamp_min(0).sqrt()
    return _per_unit(consumer.double().abs().sum(dim=0) * norms, unit_size)


def column_variance(stats: LayerStats) -> torch.Tensor:
    """Sample variance of each input column over all calibration tokens (N − 1 in the denominator, as FLAP)."""
    n = stats.n_tokens
    if stats.mean_sum is None or n < 2:
        raise ValueError("the fluctuation metric needs the input means of at least two tokens")
    s = stats.mean_sum.double()
    return ((stats.column_sq_norm().double() - s * s / n) / (n - 1)).clamp_min(0)


def flap_scores(producers, consumer: torch.Tensor, unit_size: int, stats: LayerStats) -> torch.Tensor:
    """FLAP's fluctuation metric (WIFV; An et al. 2024): Var(x_j)·‖W_:,j‖² summed over the unit's columns. A
    column whose input barely fluctuates is well replaced by a bias holding its mean (see compensation.flap_bias)."""
    return _per_unit(column_variance(stats) * consumer.double().pow(2).sum(dim=0), unit_size)


def choose_removed(scores: torch.Tensor, groups: int, drop_groups: int, drop_per_group: int) -> list[int]:
    """Units to remove when units are split into ``groups`` equal, consecutive groups: the ``drop_groups`` groups
    of lowest summed score, then the ``drop_per_group`` lowest units of every remaining group (channels: one group).
    Ties go to the lower index (stable sort), so choices are deterministic."""
    per = scores.numel() // groups
    by_group = scores.reshape(groups, per)
    dropped = torch.argsort(by_group.sum(dim=1), stable=True)[:drop_groups].tolist()
    removed = [g * per + j for g in dropped for j in range(per)]
    for g in range(groups):
        if g not in dropped:
            removed += [g * per + int(j) for j in torch.argsort(by_group[g], stable=True)[:drop_per_group]]
    return sorted(removed)


def cosine_dissimilarity(x_in: torch.Tensor, x_out: torch.Tensor) -> tuple[float, int]:
    """(Σ over tokens of 1 − cos(x_in, x_out), tokens): ShortGPT's block influence (Men et al. 2024) is the mean.
    A block that barely turns its input is the cheapest to remove."""
    a, b = x_in.reshape(-1, x_in.shape[-1]).double(), x_out.reshape(-1, x_out.shape[-1]).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return float((1 - cos).sum()), a.shape[0]
