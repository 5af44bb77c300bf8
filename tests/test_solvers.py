"""Refit (PCG), ALPS, MAMA and DSnoT against closed forms and slow, plainly written references."""
import pytest
import torch

from prunelab.algorithms import alps, dsnot, get_algorithm, mama  # noqa: F401  (registration)
from prunelab.algorithms.alps import project
from prunelab.algorithms.dsnot import dsnot_refine
from prunelab.algorithms.refit import refit_on_support
from prunelab.engine.sequential import relative_reconstruction_error
from prunelab.stats import LayerStats, StatsAccumulator
from prunelab.patterns import Pattern, select_pruned
from test_algorithms import correlated_inputs


def all_stats(x):
    acc = StatsAccumulator(x.shape[1], frozenset({"hessian", "sq_norm", "mean"}), "cpu")
    for chunk in x.split(200):
        acc.add(chunk[None])
    return acc.result()


def closed_form_refit(w, h, keep, damp=0.0):
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        s = keep[r].nonzero().flatten()
        if len(s):
            h_ss = h[s][:, s] + damp * torch.eye(len(s), dtype=h.dtype)
            out[r, s] = torch.linalg.solve(h_ss, (w[r] @ h)[s])
    return out


def assert_refit_optimal(out, w, h, keep, stop_tol=1e-6):
    """``out`` solves each row's least squares on its support as well as PCG's stopping rule guarantees.

    PCG stops once its (float32, recurrence) residual is below ``stop_tol``·‖b‖; the true residual, recomputed in
    float64, may drift above that by float32 rounding, so 10x is allowed. The distance to the exact optimum then
    follows from the residual, not from a guess: ‖x − x*‖ ≤ ‖H_SS⁻¹‖·‖r‖ (plus float32 rounding of x itself).
    """
    out, w, h = out.double(), w.double(), h.double()
    assert (out[~keep] == 0).all()
    ref = closed_form_refit(w, h, keep)
    for r in range(w.shape[0]):
        s = keep[r].nonzero().flatten()
        if len(s) == 0:
            continue
        h_ss, b = h[s][:, s], (w[r] @ h)[s]
        residual = (h_ss @ out[r, s] - b).norm()
        assert residual <= 10 * stop_tol * b.norm(), (r, float(residual / b.norm()))
        bound = residual / torch.linalg.eigvalsh(h_ss)[0] + 2 ** -23 * ref[r].norm()
        assert (out[r] - ref[r]).norm() <= bound, (r, float((out[r] - ref[r]).norm()), float(bound))


def assert_pattern(out, pattern, dense_shape):
    rows, cols = dense_shape
    zeros = out == 0
    if pattern.is_nm:
        assert torch.equal(zeros.view(rows, -1, pattern.m).sum(-1), torch.full((rows, cols // pattern.m), pattern.n))
    elif pattern.scope == "row":
        assert torch.equal(zeros.sum(1), torch.full((rows,), int(cols * pattern.sparsity)))
    else:
        assert int(zeros.sum()) == int(rows * cols * pattern.sparsity)


# ---- refit ---------------------------------------------------------------------------------------------------

def test_stats_mean_kind_and_old_layout():
    x = correlated_inputs()
    stats = all_stats(x)
    torch.testing.assert_close(stats.column_mean(), x.mean(0), rtol=1e-5, atol=1e-5)
    assert LayerStats(5, None, None).mean_sum is None  # positional construction unchanged
    with pytest.raises(ValueError, match="column means"):
        LayerStats(5).column_mean()


def test_stats_count_sequences_and_their_within_sequence_variance():
    g = torch.Generator().manual_seed(1)
    lengths = [100, 150, 150, 200]  # the two middle sequences arrive as one batch
    seqs = [correlated_inputs(tokens=n, seed=i) + 2 * torch.randn(64, generator=g) for i, n in enumerate(lengths)]
    acc = StatsAccumulator(64, frozenset({"sq_norm", "mean"}), "cpu")
    acc.add(seqs[0])
    acc.add(torch.stack(seqs[1:3]))
    acc.add(seqs[3][None])
    stats = acc.result()
    assert (stats.n_samples, stats.n_tokens, stats.tokens_per_sample()) == (4, 600, 150.0)
    slow = sum(x.double().var(0, unbiased=False) * len(x) for x in seqs) / 600  # token-weighted mean of variances
    torch.testing.assert_close(stats.column_within_sample_var().double(), slow, rtol=1e-4, atol=1e-4)
    everything = torch.cat(seqs).double().var(0, unbiased=False)
    assert (slow < everything).all()  # the sequences' own offsets are left out


def test_refit_equals_closed_form_least_squares():
    x = correlated_inputs(features=48).double()
    h = x.T @ x
    w = torch.randn(12, 48, dtype=torch.float64)
    keep = torch.rand(12, 48) > 0.6
    keep[3] = False  # a row with nothing kept stays zero
    out = refit_on_support(w, h, keep, iters=300, tol=1e-12, dampening=0.0)
    ref = closed_form_refit(w, h, keep)
    assert (out[~keep] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-8)
    warm = refit_on_support(w, h, keep, iters=300, tol=1e-12, dampening=0.0, w0=ref + 0.1)
    torch.testing.assert_close(warm, ref, rtol=1e-7, atol=1e-8)
    damped = refit_on_support(w, h, keep, iters=300, tol=1e-12, dampening=1e-2)
    lam = 1e-2 * torch.diagonal(h).mean()
    torch.testing.assert_close(damped, closed_form_refit(w, h, keep, lam), rtol=1e-7, atol=1e-8)


def test_refit_fp32_and_dead_inputs():
    x = correlated_inputs(features=48)
    x[:, 7] = 0
    h = x.T @ x
    w = torch.randn(10, 48)
    keep = torch.rand(10, 48) > 0.5
    out = refit_on_support(w, h, keep)
    assert torch.isfinite(out).all() and (out[~keep] == 0).all()
    live = torch.ones(48, dtype=torch.bool)
    live[7] = False
    assert_refit_optimal(out[:, live], w[:, live], h[live][:, live], keep[:, live])


# ---- ALPS ----------------------------------------------------------------------------------------------------

def test_projection_respects_nm_exactly():
    z = torch.randn(16, 32)
    for n, m in [(2, 4), (4, 8), (1, 4)]:
        proj, pruned = project(z, Pattern(n=n, m=m))
        assert torch.equal(pruned.view(16, -1, m).sum(-1), torch.full((16, 32 // m), n))
        groups = z.abs().view(16, -1, m)
        kept_min = groups.masked_fill(pruned.view(16, -1, m), float("inf")).min(-1).values
        pruned_max = groups.masked_fill(~pruned.view(16, -1, m), -1.0).max(-1).values
        assert (kept_min >= pruned_max).all()
        assert torch.equal(proj, z.masked_fill(pruned, 0.0))


@pytest.mark.parametrize("pattern", [Pattern(0.7), Pattern(0.5, scope="row"), Pattern(n=2, m=4)])
def test_alps_pattern_settling_and_refit(pattern):
    x = correlated_inputs()
    stats = all_stats(x)
    w = torch.randn(24, 64)
    algo = get_algorithm("alps")
    out = algo.prune(w, stats, pattern)
    assert_pattern(out, pattern, w.shape)
    trace = algo.last_trace
    assert len(trace) < algo.max_iters and trace[-algo.patience:] == [0] * algo.patience and max(trace) > 0
    assert_refit_optimal(out, w, stats.hessian, out != 0)  # ALPS ends with a PCG refit on its support
    assert "last_trace" not in algo.options()


def test_alps_beats_sparsegpt_at_70_percent():
    x = correlated_inputs(features=96)
    stats = all_stats(x)
    w = torch.randn(48, 96)
    err = {name: relative_reconstruction_error(w, get_algorithm(name).prune(w, stats, Pattern(0.7)), stats.hessian)
           for name in ("sparsegpt", "alps")}
    assert err["alps"] <= err["sparsegpt"]


# ---- MAMA ----------------------------------------------------------------------------------------------------

def slow_mama(w, h, pruned):
    w, h = w.double(), h.double()
    out = w.masked_fill(pruned, 0.0)
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            if not pruned[i, j]:
                continue
            best, best_k = None, None
            for k in range(w.shape[1]):
                if pruned[i, k]:
                    continue
                denom = (h[j, j] * h[k, k]).sqrt()
                c = abs(h[j, k] / denom) if denom > 0 else 0.0
                if best is None or c > best:
                    best, best_k = c, k
            if best_k is not None and h[best_k, best_k] > 0:
                out[i, best_k] += w[i, j] * h[j, best_k] / h[best_k, best_k]
    return out.float()


@pytest.mark.parametrize("pattern,candidates", [(Pattern(0.6), 64), (Pattern(0.75, scope="row"), 3),
                                                (Pattern(n=2, m=4), 2)])
def test_mama_matches_slow_reference_and_magnitude_support(pattern, candidates):
    x = correlated_inputs(tokens=256, features=32)
    x[:, 4] = 0  # a dead input
    stats = all_stats(x)
    w = torch.randn(12, 32)
    out = get_algorithm("mama", candidates=candidates, row_chunk=5).prune(w, stats, pattern)
    magnitude = get_algorithm("magnitude").prune(w, None, pattern)
    assert torch.equal(out == 0, magnitude == 0)
    ref = slow_mama(w, stats.hessian, select_pruned(w.abs(), pattern))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_mama_reconstructs_better_than_magnitude():
    x = correlated_inputs(features=96)
    stats = all_stats(x)
    w = torch.randn(48, 96)
    for pattern in (Pattern(0.6), Pattern(n=2, m=4)):
        err = {name: relative_reconstruction_error(w, get_algorithm(name).prune(w, stats, pattern), stats.hessian)
               for name in ("magnitude", "mama")}
        assert err["mama"] < err["magnitude"]


# ---- DSnoT ---------------------------------------------------------------------------------------------------

def offset_inputs(tokens=512, features=64):
    return correlated_inputs(tokens, features) + torch.linspace(-1.0, 1.5, features)


def expected_error(w_dense, w, stats):
    return (w_dense.double() - w.double()) @ stats.column_mean().double()


def slow_dsnot_row(wd, wp, mu, var, norm, max_cycles, threshold, var_power, m=0, same_sign=False):
    """One row of DSnoT written plainly: two sorted candidate lists per side, walked once."""
    wd, w = wd.tolist(), wp.tolist()
    cols = range(len(w))
    pruned0 = [v == 0 for v in w]
    gain = [wd[j] * mu[j] for j in cols]
    score = [abs(gain[j]) / var[j] ** var_power for j in cols]
    imp = [abs(w[j]) * norm[j] for j in cols]
    grow = {1: sorted([j for j in cols if pruned0[j] and gain[j] > 0], key=lambda j: -score[j]),
            -1: sorted([j for j in cols if pruned0[j] and gain[j] < 0], key=lambda j: -score[j])}
    drop = {1: sorted([j for j in cols if not pruned0[j] and w[j] * mu[j] < 0], key=lambda j: imp[j]),
            -1: sorted([j for j in cols if not pruned0[j] and w[j] * mu[j] > 0], key=lambda j: imp[j])}
    e = sum((a - b) * c for a, b, c in zip(wd, w, mu))
    sign0 = (e > 0) - (e < 0)
    dropped = set()
    for _ in range(max_cycles):
        if abs(e) <= threshold:
            break
        side = 1 if e > 0 else -1
        if not grow[side]:
            break
        g = grow[side][0]
        if m:
            cands = [j for j in range(g // m * m, g // m * m + m) if not pruned0[j] and j not in dropped]
            if not cands:
                break
            k = min(cands, key=lambda j: imp[j])
        else:
            dside = 1 if e >= 0 else -1
            if not drop[dside]:
                break
            k = drop[dside][0]
        e_new = e - gain[g] + w[k] * mu[k]
        if same_sign and ((e_new > 0) - (e_new < 0)) != sign0:
            break
        grow[side].pop(0)
        if not m:
            drop[dside].pop(0)
        w[g], w[k] = wd[g], 0.0
        dropped.add(k)
        e = e_new
    return torch.tensor(w, dtype=torch.float64)


@pytest.mark.parametrize("pattern", [Pattern(0.6, scope="row"), Pattern(0.7), Pattern(n=2, m=4)])
def test_dsnot_keeps_counts_lowers_error_and_matches_reference(pattern):
    x = offset_inputs()
    stats = all_stats(x)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    start = get_algorithm("wanda").prune(w, stats, pattern)
    out = dsnot_refine(w, start, stats, pattern, max_cycles=30, threshold=8.0)
    assert torch.equal((out == 0).sum(1), (start == 0).sum(1))
    assert_pattern(out, pattern, w.shape)
    kept = out != 0
    assert torch.equal(out[kept], w[kept])  # no weight updates, only the mask moves
    e0, e1 = expected_error(w, start, stats).abs(), expected_error(w, out, stats).abs()
    # N:M stops a row before its error changes sign and may prune against it, so it gains less (seed 0: 0.40)
    assert e1.mean() < (0.6 if pattern.is_nm else 0.4) * e0.mean() and (e1 < e0).sum() >= 12
    # the authors' units: sums over one calibration sequence (here chunks of 200, 200 and 112 tokens)
    mu = stats.column_mean().double() * (512 / 3)
    sq = stats.column_sq_norm().double()
    var = stats.column_within_sample_var().double()
    var = var.clamp_min(1e-12 * float(var.max()))
    moved = 0
    for r in range(16):
        ref = slow_dsnot_row(w[r].double(), start[r].double(), mu.tolist(), var.tolist(), sq.sqrt().tolist(),
                             30, 8.0, 1.0, pattern.m, same_sign=pattern.is_nm)
        assert torch.equal(out[r].double() == 0, ref == 0), r
        torch.testing.assert_close(out[r].double(), ref)
        moved += int((ref != start[r].double()).sum())
    assert moved >= 16  # the reference really moved weights, so the comparison means something


def test_dsnot_algorithm_refines_wanda():
    x = offset_inputs()
    stats = all_stats(x)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    wanda = get_algorithm("wanda").prune(w, stats, Pattern(0.5, scope="row"))
    out = get_algorithm("dsnot", threshold=0.01).prune(w, stats, Pattern(0.5, scope="row"))
    assert_pattern(out, Pattern(0.5, scope="row"), w.shape)
    assert not torch.equal(out, wanda)
    assert expected_error(w, out, stats).abs().sum() < expected_error(w, wanda, stats).abs().sum()
    assert get_algorithm("dsnot").needs == frozenset({"sq_norm", "mean"})


@pytest.mark.parametrize("pattern", [Pattern(0.6, scope="row"), Pattern(n=2, m=4)])
def test_dsnot_hessian_guard_never_raises_the_true_row_error(pattern):
    x = offset_inputs()
    stats = all_stats(x)
    h = (x.T @ x).double()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    start = get_algorithm("wanda").prune(w, stats, pattern)
    plain = dsnot_refine(w, start, stats, pattern, max_cycles=30, threshold=8.0)
    guarded = dsnot_refine(w, start, stats, pattern, max_cycles=30, threshold=8.0, hessian=h)

    def row_errors(wp):
        d = w.double() - wp.double()
        return ((d @ h) * d).sum(1)

    assert_pattern(guarded, pattern, w.shape)
    assert torch.equal((guarded == 0).sum(1), (start == 0).sum(1))
    assert (row_errors(guarded) <= row_errors(start) * (1 + 1e-9)).all()
    assert (row_errors(guarded) < row_errors(start)).any()
    assert not torch.equal(guarded, plain) or (row_errors(plain) <= row_errors(start)).all()
