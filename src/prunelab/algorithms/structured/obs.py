"""Choosing units by reconstruction error: greedy structured Optimal Brain Surgeon (as in ZipLM / SlimGPT).

Removing the consumer's input columns S and re-fitting the rest by least squares raises the output error
‖W X − Ŵ X‖² by tr(W_S [(H⁻¹)_SS]⁻¹ W_Sᵀ), H = XᵀX (Hassibi & Stork's OBS for a group). Greedily remove the unit
of smallest increase, then update W and H⁻¹ as if it were gone (W ← W − W_S[(H⁻¹)_SS]⁻¹(H⁻¹)_S:, and the same
downdate of H⁻¹), so each choice sees the compensation of the previous ones. Only the choice is returned; the
engine's refit re-solves the kept weights exactly.
"""
from __future__ import annotations

import torch


def _remove(w: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor) -> None:
    block_inv = torch.linalg.inv(hinv[cols][:, cols])
    w.sub_((w[:, cols] @ block_inv) @ hinv[cols, :])
    hinv.sub_(hinv[:, cols] @ block_inv @ hinv[cols, :])
    w[:, cols] = 0.0
    hinv[cols, :] = 0.0
    hinv[:, cols] = 0.0


def _errors(w: torch.Tensor, hinv: torch.Tensor, units: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Error increase of removing each of ``units`` alone."""
    if unit_size == 1:
        return w[:, units].pow(2).sum(dim=0) / torch.diagonal(hinv)[units]
    out = []
    for u in units.tolist():
        c = torch.arange(u * unit_size, (u + 1) * unit_size)
        out.append((w[:, c] @ torch.linalg.inv(hinv[c][:, c]) * w[:, c]).sum())
    return torch.stack(out)


def obs_select(consumer: torch.Tensor, hessian: torch.Tensor, unit_size: int, groups: int, drop_groups: int,
               drop_per_group: int, dampening: float = 1e-4, extra_cols: int = 0, rounds: int | None = 32) -> list[int]:
    """Units to remove, under the same group rule as criteria.choose_removed: ``drop_groups`` whole groups first
    (each scored as one block of columns), then ``drop_per_group`` units from every remaining group.

    ``rounds``: the units are removed in at most this many rounds, each taking the units of smallest error as
    estimated at the start of the round (with its exact joint update); None removes one unit per round (exact
    greedy). Each round costs an update of H⁻¹ (in²), so hundreds of channels are chosen in seconds.

    ``hessian`` covers the consumer's columns plus ``extra_cols`` trailing ones that are never removed (the
    constant input of an augmented H, so the error counts a refitted bias). λ = dampening·mean(diag H) is added
    to the unit columns' diagonal, as in the refit.
    """
    n_cols = consumer.shape[1]
    units = n_cols // unit_size
    per = units // groups
    h = hessian.double().clone()
    diag = torch.diagonal(h)
    diag[:n_cols] += dampening * float(diag[:n_cols].mean())
    diag[diag <= 0] = 1.0  # dead inputs: any error estimate is fine, they carry no signal
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    w = torch.cat([consumer.double(), consumer.new_zeros(consumer.shape[0], extra_cols, dtype=torch.float64)], dim=1)
    cols = lambda us: torch.cat([torch.arange(u * unit_size, (u + 1) * unit_size) for u in us])  # noqa: E731

    group_of = torch.arange(units) // per
    alive = torch.ones(units, dtype=torch.bool)
    for _ in range(drop_groups):  # whole groups: score each as one block of columns
        candidates = sorted(set(group_of[alive].tolist()))
        errors = []
        for g in candidates:
            c = cols(range(g * per, (g + 1) * per))
            errors.append((w[:, c] @ torch.linalg.inv(hinv[c][:, c]) * w[:, c]).sum())
        best = candidates[int(torch.argmin(torch.stack(errors)))]
        _remove(w, hinv, cols(range(best * per, (best + 1) * per)))
        alive[best * per:(best + 1) * per] = False
    taken = torch.zeros(groups, dtype=torch.long)
    left = drop_per_group * len(set(group_of[alive].tolist()))
    rounds_left = left if rounds is None else max(1, min(rounds, left))
    while left > 0:
        eligible = torch.nonzero(alive & (taken[group_of] < drop_per_group)).flatten()
        order = eligible[torch.argsort(_errors(w, hinv, eligible, unit_size), stable=True)]
        want, picked = -(-left // rounds_left), []  # ceil: later rounds get the rest
        for u in order.tolist():
            if taken[u // per] < drop_per_group:
                picked.append(u)
                taken[u // per] += 1
                if len(picked) == want:
                    break
        _remove(w, hinv, cols(picked))
        alive[picked] = False
        left -= len(picked)
        rounds_left = max(rounds_left - 1, 1)
    return torch.nonzero(~alive).flatten().tolist()


def obs_scores(producers, consumer: torch.Tensor, unit_size: int, stats, dampening: float = 1e-4) -> torch.Tensor:
    """Each unit's OBS error increase if it alone were removed (higher = keep): the ranking used to compare
    units across layers (adaptive allocation); the removal itself is greedy (obs_select)."""
    h = stats.require_hessian().double().clone()
    diag = torch.diagonal(h)
    diag += dampening * float(diag.mean())
    diag[diag <= 0] = 1.0
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return _errors(consumer.double(), hinv, torch.arange(consumer.shape[1] // unit_size), unit_size)
