"""Structured-pruning math on random tensors, against slow references written from the definitions."""
import itertools

import pytest
import torch

from prunelab.algorithms.structured import (augmented_hessian, choose_removed, cosine_dissimilarity, flap_bias,
                                            flap_scores, magnitude_scores, obs_select, refit_consumer, relative_error,
                                            wanda_scores)
from prunelab.engine.structured import plan_channels, plan_heads
from prunelab.models.adapters import UnitGroup
from prunelab.stats import StatsAccumulator


def layer_problem(n_tokens=200, d_in=12, d_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, d_in, dtype=torch.float64)
    x += torch.linspace(-1, 1, d_in, dtype=torch.float64)  # non-zero means, so biases matter
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return x, w


def stats_of(x):
    acc = StatsAccumulator(x.shape[1], frozenset({"hessian", "mean"}), "cpu")
    acc.add(x.float())
    return acc.result()


def test_magnitude_is_the_l2_norm_of_all_of_a_units_weights():
    g = torch.Generator().manual_seed(1)
    gate, up = torch.randn(6 * 2, 4, generator=g), torch.randn(6 * 2, 4, generator=g)
    down = torch.randn(3, 6 * 2, generator=g)
    got = magnitude_scores([gate, up], down, unit_size=2)
    for u in range(6):
        rows = slice(2 * u, 2 * u + 2)
        ref = torch.cat([gate[rows].flatten(), up[rows].flatten(), down[:, rows].flatten()]).double().norm()
        assert got[u].item() == pytest.approx(ref.item(), rel=1e-12)


def test_wanda_and_flap_scores_match_their_definitions():
    x, w = layer_problem()
    st = stats_of(x)
    wanda, flap = wanda_scores([], w, 3, st), flap_scores([], w, 3, st)
    for u in range(4):
        cols = range(3 * u, 3 * u + 3)
        ref_wanda = sum(float(w[i, j].abs() * x[:, j].norm()) for i in range(w.shape[0]) for j in cols)
        ref_flap = sum(float(x[:, j].var(unbiased=True) * w[:, j].pow(2).sum()) for j in cols)
        # statistics are accumulated in float32: relative error ~1e-6
        assert wanda[u].item() == pytest.approx(ref_wanda, rel=1e-5)
        assert flap[u].item() == pytest.approx(ref_flap, rel=1e-4)


def test_flap_bias_keeps_the_mean_output():
    x, w = layer_problem()
    removed = torch.tensor([1, 4, 7])
    kept = torch.tensor([j for j in range(w.shape[1]) if j not in removed.tolist()])
    bias = flap_bias(w, x.mean(dim=0), removed)
    dense_mean = (x @ w.T).mean(dim=0)
    pruned_mean = (x[:, kept] @ w[:, kept].T + bias).mean(dim=0)
    torch.testing.assert_close(pruned_mean, dense_mean, rtol=0, atol=1e-12)


def test_choose_removed_drops_lowest_groups_then_lowest_per_group():
    scores = torch.tensor([5.0, 1.0, 9.0,  0.1, 0.2, 0.3,  7.0, 8.0, 0.5])  # 3 groups of 3
    assert choose_removed(scores, groups=3, drop_groups=1, drop_per_group=1) == [1, 3, 4, 5, 8]
    assert choose_removed(scores, groups=1, drop_groups=0, drop_per_group=4) == [3, 4, 5, 8]
    # brute force: among all ways of dropping 2 per group, the chosen one has the lowest total score
    chosen = choose_removed(scores, groups=3, drop_groups=0, drop_per_group=2)
    best = min((sum(scores[list(c)]) for c in itertools.product(*[itertools.combinations(range(3 * k, 3 * k + 3), 2)
                                                                    for k in range(3)]) for c in [sum(c, ())]))
    assert float(scores[chosen].sum()) == pytest.approx(float(best))


def lstsq_error(x, w, kept_cols, bias: bool) -> float:
    """‖XWᵀ − X_K Ŵ_Kᵀ (− b)‖² with Ŵ (and b) the exact least-squares fit, by QR (torch.linalg.lstsq)."""
    a = x[:, kept_cols]
    if bias:
        a = torch.cat([a, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    target = x @ w.T
    sol = torch.linalg.lstsq(a, target).solution
    return float((a @ sol - target).pow(2).sum())


@pytest.mark.parametrize("bias", [False, True])
def test_refit_equals_a_direct_least_squares_solve(bias):
    x, w = layer_problem()
    kept = torch.tensor([0, 2, 3, 5, 8, 9, 11])
    a = x[:, kept]
    if bias:
        a = torch.cat([a, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    reference = torch.linalg.lstsq(a, x @ w.T).solution.T
    h = x.T @ x
    if bias:
        h = augmented_hessian(h, x.sum(dim=0), x.shape[0])
        w_in = torch.cat([w, torch.zeros(w.shape[0], 1, dtype=w.dtype)], dim=1)
        got = refit_consumer(w_in, h, torch.cat([kept, torch.tensor([w.shape[1]])]), dampening=0.0,
                             fit_bias_index=w.shape[1])
    else:
        got = refit_consumer(w, h, kept, dampening=0.0)
    # fp64 normal equations on a well-conditioned problem (cond(H) ~ 1e3): agreement to ~1e-10
    torch.testing.assert_close(got, reference, rtol=1e-9, atol=1e-9)


def test_relative_error_with_a_bias_column_matches_the_outputs():
    x, w = layer_problem()
    g = torch.Generator().manual_seed(3)
    w_hat = w * (torch.rand(w.shape, generator=g, dtype=w.dtype) > 0.4)
    b = torch.randn(w.shape[0], generator=g, dtype=w.dtype)
    h = augmented_hessian(x.T @ x, x.sum(dim=0), x.shape[0])
    pad = lambda m, col: torch.cat([m, col[:, None]], dim=1)  # noqa: E731
    got = relative_error(pad(w, torch.zeros(w.shape[0], dtype=w.dtype)), pad(w_hat, b), h)
    ref = ((x @ w.T) - (x @ w_hat.T + b)).norm() / (x @ w.T).norm()
    assert got == pytest.approx(float(ref), rel=1e-10)


def greedy_by_lstsq(x, w, unit_size, groups, drop_groups, drop_per_group, bias):
    """The greedy rule of obs_select, with every candidate's error from an explicit least-squares solve."""
    units = w.shape[1] // unit_size
    per = units // groups
    cols = lambda us: [c for u in us for c in range(u * unit_size, (u + 1) * unit_size)]  # noqa: E731
    removed: list[int] = []
    for _ in range(drop_groups):
        cands = [g for g in range(groups) if g * per not in removed]
        errs = [lstsq_error(x, w, cols(u for u in range(units) if u not in removed and u // per != g), bias)
                for g in cands]
        best = cands[min(range(len(cands)), key=errs.__getitem__)]
        removed += list(range(best * per, (best + 1) * per))
    taken = {g: 0 for g in range(groups) if g * per not in removed}
    for _ in range(drop_per_group * len(taken)):
        cands = [u for u in range(units) if u not in removed and taken.get(u // per, drop_per_group) < drop_per_group]
        errs = [lstsq_error(x, w, cols(v for v in range(units) if v not in removed and v != u), bias) for u in cands]
        best = cands[min(range(len(cands)), key=errs.__getitem__)]
        removed.append(best)
        taken[best // per] += 1
    return sorted(removed)


@pytest.mark.parametrize("unit_size,groups,drop_groups,drop_per_group,bias", [
    (1, 1, 0, 5, False), (1, 1, 0, 5, True), (2, 3, 1, 1, False), (2, 3, 0, 1, True)])
def test_obs_greedy_matches_greedy_by_explicit_least_squares(unit_size, groups, drop_groups, drop_per_group, bias):
    x, w = layer_problem(n_tokens=300, d_in=12, d_out=6, seed=4)
    h = x.T @ x
    extra = 0
    if bias:
        h, extra = augmented_hessian(h, x.sum(dim=0), x.shape[0]), 1
    got = obs_select(w, h, unit_size, groups, drop_groups, drop_per_group, dampening=0.0, extra_cols=extra,
                     rounds=None)
    assert got == greedy_by_lstsq(x, w, unit_size, groups, drop_groups, drop_per_group, bias)


def test_block_influence_is_one_minus_mean_cosine():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    total, n = cosine_dissimilarity(a, b)
    ref = sum(1 - float(torch.dot(a[i, t], b[i, t]) / (a[i, t].norm() * b[i, t].norm()))
              for i in range(2) for t in range(7))
    assert n == 14 and total == pytest.approx(ref, rel=1e-6)


SMOLLM2_HEADS = UnitGroup("heads", "self_attn.o_proj", count=9, unit_size=64, groups=3,
                          unit_params=64 * 576 * 2, group_params=2 * 64 * 576)
SMOLLM2_CHANNELS = UnitGroup("channels", "mlp.down_proj", count=1536, unit_size=1, groups=1,
                             unit_params=3 * 576, group_params=0)


def test_head_plan_is_the_closest_valid_gqa_layout():
    attention = 9 * SMOLLM2_HEADS.unit_params + 3 * SMOLLM2_HEADS.group_params
    assert plan_heads(SMOLLM2_HEADS, 0.5 * attention) == (0, 2)  # 6 query heads: exactly half; kv heads kept
    assert plan_heads(SMOLLM2_HEADS, 0.3 * attention) == (1, 0)  # one whole kv group (its 3 heads): 33%
    assert plan_heads(SMOLLM2_HEADS, 0.1 * attention) == (0, 0)
    assert plan_heads(SMOLLM2_HEADS, 10 * attention) == (2, 2)  # at most: one group with one head stays


def test_channel_plan_rounds_the_kept_width():
    assert plan_channels(SMOLLM2_CHANNELS, 500 * 1728) == 500
    assert plan_channels(SMOLLM2_CHANNELS, 500 * 1728, round_to=64) == 1536 - 1024  # kept 1036 -> 1024
    assert plan_channels(SMOLLM2_CHANNELS, 1e12) == 1535
