"""Iterative pruning schedules: the cumulative sparsity to reach after each of K pruning steps.

Every schedule starts from 0 (the dense model) and ends exactly at the target S (the last step is set to S, so
no rounding can leave the model short of it). With Δ_k = s_k − s_{k−1} the fraction of all weights zeroed at step k:

- ``constant``: the same *rate* each step, i.e. each step zeroes the same fraction r of the weights still
  present (seed 003: "a pruning rate of 0.2 means 20% of the weights are pruned in each iteration"):
  s_k = 1 − (1 − r)^k, with r = 1 − (1 − S)^(1/K), or r = ``rate`` given (then K is the first k with s_k ≥ S,
  and the last step is capped at S).
- ``linear``: the cumulative sparsity rises linearly, s_k = S·k/K (equal Δ_k; as a fraction of the weights
  still present each step removes more, seed 003's "an increasing proportion of weights").
- ``exponential``: each step zeroes twice as many weights as the one before, s_k = S·(2^k − 1)/(2^K − 1).
- ``cubic``: Zhu & Gupta (2017, arXiv 1710.01878), s_k = S + (s_0 − S)(1 − k/K)³ with s_0 = 0: prunes fast
  while many redundant weights remain and slowly near the target.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "exponential", "cubic")


def steps_for_rate(target: float, rate: float) -> int:
    """How many steps of a constant ``rate`` reach ``target``: the smallest k with 1 − (1 − rate)^k ≥ target."""
    if not 0 < rate < 1:
        raise ValueError(f"the pruning rate is a fraction of the remaining weights in (0, 1), got {rate}")
    k = max(1, math.ceil(math.log1p(-target) / math.log1p(-rate) - 1e-12))
    return k


def schedule_targets(schedule: str, target: float, steps: int | None = None, rate: float | None = None) -> list[float]:
    """Cumulative sparsity after each pruning step, ending exactly at ``target``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0 < target < 1:
        raise ValueError(f"the target sparsity must be in (0, 1), got {target}")
    if rate is not None:
        if schedule != "constant":
            raise ValueError("--rate sets a constant schedule (the same fraction of the remaining weights each "
                             f"step); it does not combine with --schedule {schedule}")
        needed = steps_for_rate(target, rate)
        if steps is not None and steps != needed:
            raise ValueError(f"a constant rate of {rate:g} reaches {target:g} in {needed} steps, not {steps}; "
                             "give --rate or --steps, not both")
        steps = needed
    if steps is None or steps < 1:
        raise ValueError(f"the number of pruning steps must be >= 1, got {steps}")
    k_all = range(1, steps + 1)
    if schedule == "constant":
        r = rate if rate is not None else 1 - (1 - target) ** (1 / steps)
        targets = [min(target, 1 - (1 - r) ** k) for k in k_all]
    elif schedule == "linear":
        targets = [target * k / steps for k in k_all]
    elif schedule == "exponential":
        targets = [target * (2 ** k - 1) / (2 ** steps - 1) for k in k_all]
    else:
        targets = [target * (1 - (1 - k / steps) ** 3) for k in k_all]
    targets[-1] = target
    return targets


def describe(schedule: str, target: float, steps: int, rate: float | None = None,
             threshold: float | None = None) -> str:
    if threshold is not None:
        return f"threshold |w| < {threshold:g} each of {steps} steps, capped at {target:g}"
    how = f"rate {rate:g}" if rate is not None else f"{steps} steps"
    return f"{schedule} to {target:g} in {how}"
