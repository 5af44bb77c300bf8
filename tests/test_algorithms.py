"""Each algorithm against a slow, plainly written reference on random tensors."""
import pytest
import torch

from prunelab.algorithms import available, get_algorithm
from prunelab.engine.sequential import relative_reconstruction_error
from prunelab.stats import LayerStats, StatsAccumulator
from prunelab.patterns import Pattern
from tiny_models import assert_fp32_sums_close


def correlated_inputs(tokens=512, features=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g) / features ** 0.5
    x = torch.randn(tokens, features, generator=g) @ (torch.eye(features) + 2 * mix)
    return x * torch.linspace(0.2, 3.0, features)  # uneven column scales, like real activations


def stats_for(x):
    acc = StatsAccumulator(x.shape[1], frozenset({"hessian", "sq_norm"}), "cpu")
    acc.add(x)
    return acc.result()


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"magnitude", "wanda", "sparsegpt", "random", "neg-magnitude"} <= set(available())
    with pytest.raises(ValueError, match="unknown method 'nope'; available: "):
        get_algorithm("nope")
    with pytest.raises(ValueError, match="bad options for sparsegpt"):
        get_algorithm("sparsegpt", not_an_option=1)


def test_stats_accumulator_matches_direct_formulas():
    x = correlated_inputs()
    acc = StatsAccumulator(64, frozenset({"sq_norm"}), "cpu")
    for chunk in x.split(100):
        acc.add(chunk[None])  # batched (1, tokens, features) as hooks see it
    assert_fp32_sums_close(acc.result().sq_norm, x ** 2)
    assert_fp32_sums_close(stats_for(x).hessian, x, x)


def test_stats_do_not_depend_on_how_sequences_are_batched():
    # The engine's calibration batch must not change a bit of the statistics (and so of the masks): a batch of
    # sequences is accumulated one sequence at a time, exactly as batch size 1 would.
    x = torch.randn(5, 40, 24)
    needs = frozenset({"hessian", "sq_norm", "mean"})
    one_by_one, batched = StatsAccumulator(24, needs, "cpu"), StatsAccumulator(24, needs, "cpu")
    for sequence in x:
        one_by_one.add(sequence[None])
    batched.add(x[:3])
    batched.add(x[3:])
    a, b = one_by_one.result(), batched.result()
    assert (a.n_tokens, a.n_samples) == (b.n_tokens, b.n_samples) == (200, 5)
    assert torch.equal(a.hessian, b.hessian)  # sq_norm: its diagonal
    assert torch.equal(a.mean_sum, b.mean_sum) and torch.equal(a.seq_sum_sq, b.seq_sum_sq)


@pytest.mark.parametrize("scope", ["layer", "row"])
def test_magnitude_prunes_exactly_the_smallest(scope):
    w = torch.randn(32, 48)
    out = get_algorithm("magnitude").prune(w, None, Pattern(0.6, scope=scope))
    if scope == "layer":
        k = int(w.numel() * 0.6)
        order = torch.argsort(w.abs().flatten(), stable=True)
        expected = w.flatten().clone()
        expected[order[:k]] = 0
        assert torch.equal(out, expected.view_as(w))
    else:
        k = int(48 * 0.6)
        for r in range(32):
            kept = torch.argsort(w[r].abs(), stable=True)[k:]
            assert torch.equal(out[r].nonzero().flatten().sort().values, kept.sort().values)


def test_negative_magnitude_prunes_the_largest():
    w = torch.randn(8, 16)
    out = get_algorithm("neg-magnitude").prune(w, None, Pattern(0.25))
    pruned = out == 0
    assert w.abs()[pruned].min() >= w.abs()[~pruned].max()


def test_wanda_matches_reference_per_row():
    x = correlated_inputs()
    w = torch.randn(24, 64)
    out = get_algorithm("wanda").prune(w, stats_for(x), Pattern(0.5, scope="row"))
    norms = x.norm(dim=0)
    for r in range(24):
        metric = w[r].abs() * norms
        pruned = torch.argsort(metric, stable=True)[:32]
        expected = w[r].clone()
        expected[pruned] = 0
        torch.testing.assert_close(out[r], expected, rtol=0, atol=0)


def slow_sparsegpt(w, h, sparsity=0.0, n=0, m=0, blocksize=128, damp=0.01, dtype=torch.float32):
    """Column-by-column OBS with the whole remaining row updated at once (no lazy batching), in fp64."""
    w = w.double().clone()
    h = h.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    cols = w.shape[1]
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i in range(cols):
        if i % blocksize == 0 and not m:
            j = min(i + blocksize, cols)
            sal = (w[:, i:j] ** 2 / torch.diagonal(u)[i:j] ** 2).flatten()
            k = int(sal.numel() * sparsity)
            block = torch.zeros(sal.numel(), dtype=torch.bool)
            block[torch.argsort(sal, stable=True)[:k]] = True
            mask[:, i:j] = block.view(w.shape[0], -1)
        if m and i % m == 0:
            sal = w[:, i:i + m] ** 2 / torch.diagonal(u)[i:i + m] ** 2
            idx = torch.argsort(sal, dim=1, stable=True)[:, :n]
            mask[:, i:i + m].scatter_(1, idx, True)
        err = torch.where(mask[:, i], w[:, i], 0.0) / u[i, i]
        w[:, i:] -= err[:, None] * u[i, i:][None, :]
        w[:, i][mask[:, i]] = 0
    return w.to(dtype)


@pytest.mark.parametrize("pattern,blocksize", [(Pattern(0.5), 16), (Pattern(0.7), 128), (Pattern(n=2, m=4), 16),
                                               (Pattern(n=4, m=8), 32)])
def test_sparsegpt_matches_slow_reference(pattern, blocksize):
    x = correlated_inputs()
    h = x.T @ x
    w = torch.randn(20, 64)
    out = get_algorithm("sparsegpt", blocksize=blocksize).prune(w, LayerStats(512, None, h), pattern)
    ref = slow_sparsegpt(w, h, pattern.sparsity, pattern.n, pattern.m, blocksize)
    assert torch.equal(out == 0, ref == 0)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
    if pattern.is_nm:
        assert torch.equal((out == 0).view(20, -1, pattern.m).sum(-1), torch.full((20, 64 // pattern.m), pattern.n))
    else:
        widths = [min(blocksize, 64 - start) for start in range(0, 64, blocksize)]
        assert int((out == 0).sum()) == sum(int(width * 20 * pattern.sparsity) for width in widths)


def test_sparsegpt_solves_float64_weights_in_float64():
    """The float64 reference mode: no step may round through float32 (that alone would leave ~1e-7 differences)."""
    x = correlated_inputs().double()
    h = x.T @ x
    w = torch.randn(20, 64, dtype=torch.float64)
    out = get_algorithm("sparsegpt", blocksize=16).prune(w, LayerStats(512, None, h), Pattern(0.5))
    ref = slow_sparsegpt(w, h, 0.5, blocksize=16, dtype=torch.float64)
    assert out.dtype == torch.float64
    assert torch.equal(out == 0, ref == 0)
    # the two factor H differently (triangular inverse vs explicit inverse and Cholesky): float64 rounding times
    # the damped Hessian's condition number (below 1e4 here), far under float32's 6e-8
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # float32 weights with float64 statistics (--compute-dtype float64 on a float32 model): solved in float64
    mixed = get_algorithm("sparsegpt", blocksize=16).prune(w.float(), LayerStats(512, None, h), Pattern(0.5))
    assert mixed.dtype == torch.float64
    ref32 = slow_sparsegpt(w.float(), h, 0.5, blocksize=16, dtype=torch.float64)
    assert torch.equal(mixed == 0, ref32 == 0)
    torch.testing.assert_close(mixed, ref32, rtol=1e-10, atol=1e-10)


def test_sparsegpt_factor_is_shared_by_layers_of_one_hessian_and_recomputed_when_it_changes():
    from prunelab.algorithms.sparsegpt import damped_inverse_cholesky, shared_inverse_cholesky

    x = correlated_inputs()
    h = x.T @ x
    first = shared_inverse_cholesky(h, 0.01)
    assert shared_inverse_cholesky(h, 0.01) is first  # q/k/v hand the same tensor: factorised once
    h.mul_(3.0)  # changed in place: the cached factor must not be reused
    again = shared_inverse_cholesky(h, 0.01)
    torch.testing.assert_close(again[0], damped_inverse_cholesky(h, 0.01)[0], rtol=0, atol=0)
    torch.testing.assert_close(again[0], first[0] / 3 ** 0.5, rtol=1e-5, atol=1e-6)
    assert shared_inverse_cholesky(h, 0.02) is not again
    copy = h.clone()  # equal values, another tensor: factorised afresh, same result
    assert shared_inverse_cholesky(copy, 0.01) is not again
    import prunelab.algorithms.sparsegpt as sparsegpt

    del copy  # the statistics are released: the factor goes with them
    assert sparsegpt._last_factor == {}


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda():
    x = correlated_inputs(features=96)
    stats = stats_for(x)
    w = torch.randn(48, 96)
    errors = {name: relative_reconstruction_error(w, get_algorithm(name).prune(w, stats, Pattern(0.6)), stats.hessian)
              for name in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


def test_sparsegpt_zeroes_dead_inputs_and_stays_finite():
    x = correlated_inputs()
    x[:, 5] = 0
    w = torch.randn(8, 64)
    out = get_algorithm("sparsegpt").prune(w, stats_for(x), Pattern(0.5))
    assert torch.isfinite(out).all() and (out[:, 5] == 0).all()


def test_reconstruction_error_matches_explicit_outputs():
    x = correlated_inputs()
    w = torch.randn(16, 64)
    p = w.clone()
    p[:, ::3] = 0
    expected = ((x @ w.T - x @ p.T).norm() / (x @ w.T).norm()).item()
    assert relative_reconstruction_error(w, p, x.T @ x) == pytest.approx(expected, rel=1e-4)


def test_random_masks_differ_between_same_shape_layers_and_repeat():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 32, generator=g), torch.randn(32, 32, generator=g)
    rnd = get_algorithm("random")
    assert torch.equal(rnd.scores(a), rnd.scores(a.clone()))  # same weight, same seed: same mask
    assert not torch.equal(rnd.scores(a), rnd.scores(b))  # same shape, other weight: another mask
    assert not torch.equal(rnd.scores(a), get_algorithm("random", seed=1).scores(a))


def test_sparsegpt_factor_is_the_upper_cholesky_of_the_damped_inverse():
    """U from one Cholesky of the reversed matrix and a triangular inverse equals chol((H + λI)⁻¹, upper)."""
    from prunelab.algorithms.sparsegpt import damped_inverse_cholesky

    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 48, generator=g, dtype=torch.float64)
    h = (x.T @ x).float()
    h[5, :] = h[:, 5] = 0.0  # a dead input
    given = h.clone()
    u, dead = damped_inverse_cholesky(h, 0.01)
    assert torch.equal(h, given)  # the caller's Hessian is left as it was (q/k/v and gate/up share it)
    ref = h.double().clone()
    ref[5, 5] = 1.0
    ref.diagonal().add_(0.01 * torch.diagonal(ref).mean())
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(ref)), upper=True)
    assert dead.tolist() == [i == 5 for i in range(48)]
    assert torch.equal(u, torch.triu(u))
    # fp64 factorisations of a matrix with condition ~1e3 agree far below fp32 resolution
    torch.testing.assert_close(u.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(u.double().T @ u.double(), torch.linalg.inv(ref), rtol=1e-5, atol=1e-7)


def test_sparsegpt_factor_does_not_depend_on_the_thread_count():
    """LAPACK splits a factorization's work by threads, which changed the factor's rounding (a 1-CPU Ray task and a
    2-thread run gave different SparseGPT perplexities); the factor is computed on one thread, the same bits for any
    setting, and the caller's thread count is restored. The 1536-wide, rank-deficient Hessian below gave a different
    factor at 1 and 2 threads before."""
    from prunelab.algorithms.sparsegpt import damped_inverse_cholesky

    g = torch.Generator().manual_seed(1)  # seeds 1 and 3 differed at 1 vs 2 threads on a 2-core EPYC
    x = torch.randn(300, 1536, generator=g) * torch.rand(1536, generator=g) * 3
    x[:, :8] *= 100
    h = x.T @ x
    before = torch.get_num_threads()
    factors = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            factors.append(damped_inverse_cholesky(h, 0.01)[0])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(factors[0], factors[1]) and torch.equal(factors[0], factors[2])


def test_alps_eigendecomposition_does_not_depend_on_the_thread_count():
    """Same reason for ALPS's eigh of the scaled Hessian (it differed at 1 and 2 threads for every seed tried)."""
    from prunelab.algorithms.alps import ALPS

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1536, generator=g) * torch.rand(1536, generator=g) * 3
    h = x.T @ x
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ALPS()._preconditioned_eigh(h))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("n", [1, 127, 300, 777])
def test_triangular_inverse_by_halves_matches_a_triangular_solve(n):
    from prunelab.algorithms.sparsegpt import inverse_lower_triangular

    g = torch.Generator().manual_seed(n)
    x = torch.randn(n + 40, n, generator=g, dtype=torch.float64)
    lower = torch.linalg.cholesky(x.T @ x + torch.eye(n, dtype=torch.float64))
    got = inverse_lower_triangular(lower, torch.zeros_like(lower), base=64)
    expected = torch.linalg.solve_triangular(lower, torch.eye(n, dtype=torch.float64), upper=False)
    assert torch.equal(got, torch.tril(got))
    # fp64, condition number of L below ~1e2: both agree to a few ulps of the largest entry
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    torch.testing.assert_close(got @ lower, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
