"""The candidate algorithms of seed 002 (taylor, fisher, gradient, kmeans, vardrop, bias, random N:M) against
slow, plainly written references, and the registries of statistics and post-steps they plug into."""
from dataclasses import dataclass

import pytest
import torch

from prunelab.algorithms import NotApplicable, PruningAlgorithm, get_algorithm, register
from prunelab.algorithms.kmeans import kmeans_1d
from prunelab.algorithms.vardrop import best_log_alpha, beta_for_target, kl_approx, kl_slope, learn_log_alpha, objective
from prunelab.engine import PostSteps, prune_model
from prunelab.models import ModelAdapter
from prunelab.patterns import Pattern
from prunelab.stats import LayerStats, StatKind, StatsAccumulator, register_stat
from prunelab.steps import PostStep, register_step
from test_algorithms import correlated_inputs, stats_for
from test_gradients import slow_gradients
from tiny_models import random_ids, tiny_model


def grad_stats(g_per_sample, x=None):
    """LayerStats with grad / grad_sq sums over the given per-sequence gradients (and input norms of x)."""
    stats = stats_for(x) if x is not None else LayerStats(0)
    stats.extra.update({"grad": sum(g_per_sample), "grad_sq": sum(g * g for g in g_per_sample)})
    stats.grad_samples = len(g_per_sample)
    if x is not None:
        stats.n_samples = 4  # as if x were 4 calibration sequences
    return stats


def kept_by_row(scores, k):
    """Slow reference of per-row pruning: the k lowest scores of each row (stable order) are pruned."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        mask[r, sorted(range(scores.shape[1]), key=lambda j: (float(scores[r, j]), j))[:k]] = True
    return mask


# ---- gradient criteria -----------------------------------------------------------------------------------

def test_taylor_fisher_gradient_scores_match_their_formulas():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 16, generator=g)
    grads = [torch.randn(6, 16, generator=g) for _ in range(5)]
    x = correlated_inputs(tokens=64, features=16)
    stats = grad_stats(grads, x)
    for name in ("taylor", "fisher", "gradient"):
        scores = torch.empty(6, 16)
        for i in range(6):
            for j in range(16):
                gs = [float(gr[i, j]) for gr in grads]
                mean_g = sum(gs) / 5
                if name == "taylor":
                    scores[i, j] = abs(float(w[i, j]) * mean_g)
                elif name == "fisher":
                    scores[i, j] = float(w[i, j]) ** 2 * sum(v * v for v in gs) / 5
                else:  # GBLM: |w|·sqrt(Σ_t x_j² / n_sequences) + 100·|w|·sqrt(Σ_s g_s²)
                    x_norm = (float((x[:, j].double() ** 2).sum()) / 4) ** 0.5
                    scores[i, j] = abs(float(w[i, j])) * (x_norm + 100 * sum(v * v for v in gs) ** 0.5)
        algorithm = get_algorithm(name)
        torch.testing.assert_close(algorithm.scores(w, stats), scores, rtol=1e-5, atol=1e-6)
        out = algorithm.prune(w, stats, Pattern(0.5, scope=algorithm.default_scope))
        assert algorithm.default_scope == "row"
        assert torch.equal(out == 0, kept_by_row(scores, 8))


def test_gradient_methods_through_the_engine_use_the_dense_models_gradients():
    ids = random_ids(3, 12)
    reference = slow_gradients(tiny_model("llama"), ids)  # the same weights as each tiny_model("llama") below
    for method in ("taylor", "fisher", "gradient"):
        model = tiny_model("llama")
        adapter = ModelAdapter(model)
        dense = {n: adapter.get_weight(l).clone() for n, l in adapter.named_prunable_layers()}
        reports = prune_model(model, get_algorithm(method), Pattern(0.5, scope="row"), ids, progress=False)
        assert all(r.reconstruction_error is None for r in reports)  # score methods: no XᵀX unless asked
        for name, layer in adapter.named_prunable_layers():
            g, g2 = reference[name]
            w = dense[name]
            pruned = adapter.get_weight(layer) == 0
            assert int(pruned.sum()) == w.shape[0] * (w.shape[1] // 2)
            score = {"taylor": (w * g / 3).abs(), "fisher": w * w * g2 / 3}.get(method)
            if score is not None:  # gradients agree to float rounding: compare where the order is clear
                margin = (score - score.median(dim=1, keepdim=True).values).abs() > 1e-4 * score.abs().max()
                assert torch.equal(pruned[margin], kept_by_row(score, w.shape[1] // 2)[margin]), name


# ---- k-means ---------------------------------------------------------------------------------------------

def slow_kmeans(values, k, iters):
    """Plain Lloyd: every value against every centroid."""
    v = values.double()
    c = torch.quantile(v, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    assign = None
    for _ in range(iters):
        new = torch.tensor([min(range(k), key=lambda i: (abs(float(x) - float(c[i])), i)) for x in v])
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        c = torch.stack([v[assign == i].mean() if (assign == i).any() else c[i] for i in range(k)])
    return c, torch.tensor([min(range(k), key=lambda i: (abs(float(x) - float(c[i])), i)) for x in v])


@pytest.mark.parametrize("scope", ["layer", "row"])
def test_kmeans_equals_plain_lloyd_and_prunes_clusters_nearest_zero_first(scope):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 40, generator=g) * torch.linspace(0.5, 2, 40)
    groups = w.reshape(1, -1) if scope == "layer" else w
    centroids, assign = kmeans_1d(groups, 6, 50)
    expected = []
    for row, c, a in zip(groups, centroids, assign):
        ref_c, ref_a = slow_kmeans(row, 6, 50)
        torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)  # fp64 sums in another order
        assert torch.equal(a, ref_a)
        rank = {int(i): r for r, i in enumerate(torch.argsort(ref_c.abs(), stable=True))}
        order = sorted(range(len(row)), key=lambda j: (rank[int(ref_a[j])], abs(float(row[j])), j))
        expected.append(order)
    out = get_algorithm("kmeans", clusters=6).prune(w, None, Pattern(0.5, scope=scope))
    pruned = torch.zeros(groups.shape, dtype=torch.bool)
    k = groups.shape[1] // 2
    for r, order in enumerate(expected):
        pruned[r, order[:k]] = True
    assert torch.equal(out == 0, pruned.reshape(w.shape))
    assert torch.equal(out[out != 0], w[out != 0])  # kept values untouched


def test_kmeans_n_m_keeps_exact_groups():
    w = torch.randn(8, 32)
    out = get_algorithm("kmeans").prune(w, None, Pattern(n=2, m=4))
    assert torch.equal((out == 0).view(8, -1, 4).sum(-1), torch.full((8, 8), 2))


# ---- variational dropout -----------------------------------------------------------------------------------

def test_vardrop_objective_is_the_exact_expectation_of_the_noisy_reconstruction():
    x = correlated_inputs(tokens=256, features=12).double()
    h = x.T @ x
    g = torch.Generator().manual_seed(2)
    w_hat = torch.randn(5, 12, generator=g, dtype=torch.float64)
    theta = w_hat + 0.1 * torch.randn(5, 12, generator=g, dtype=torch.float64)
    log_alpha = torch.full((5, 12), -2.0, dtype=torch.float64)
    z = float(((w_hat @ h) * w_hat).sum())
    exact = (float(objective(theta, log_alpha, w_hat, h, z, beta=0.0))) * z  # β = 0: the reconstruction term alone
    noisy = theta * (1 + log_alpha.mul(0.5).exp() * torch.randn(4000, 5, 12, generator=g, dtype=torch.float64))
    samples = ((x @ (noisy - w_hat).transpose(1, 2)) ** 2).sum(dim=(1, 2))
    # Monte Carlo: within 4 standard errors of its own mean
    assert abs(float(samples.mean()) - exact) < 4 * float(samples.std()) / 4000 ** 0.5
    # KL approximation: the paper's constants; decreasing in log α, → 0 as α → ∞; kl_slope is its derivative
    a = torch.linspace(-8, 8, 50, dtype=torch.float64, requires_grad=True)
    kl_approx(a).sum().backward()
    torch.testing.assert_close(kl_slope(a.detach()), a.grad, rtol=1e-12, atol=1e-14)
    assert (kl_approx(a.detach()).diff() < 0).all() and float(kl_approx(torch.tensor(40.0))) < 1e-6
    assert float(kl_approx(torch.tensor(0.0))) == pytest.approx(
        0.63576 - 0.63576 / (1 + 2.718281828459045 ** -1.87320) + 0.5 * 0.6931471805599453, rel=1e-6)


def test_vardrop_alpha_step_is_the_exact_per_weight_minimiser():
    for k in (1e-3, 1e-7):
        c = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-14, 1, 120, dtype=torch.float64)])
        grid = torch.linspace(-20, 20, 400001, dtype=torch.float64)  # brute force, step 1e-4
        reference = grid[(grid[None].exp() * c[:, None] + k * kl_approx(grid[None])).argmin(1)]
        # within the brute-force grid's resolution plus the table's interpolation error (step 1e-3, smooth)
        torch.testing.assert_close(best_log_alpha(c, k), reference, rtol=0, atol=2e-4)


def test_vardrop_theta_step_converges_to_the_ridge_solution_and_the_objective_falls():
    x = correlated_inputs(tokens=256, features=16).double()
    h = x.T @ x
    w = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    diag = torch.diagonal(h)
    z = float(((w @ h) * w).sum())
    k = 0.5 / w.numel()
    alpha = best_log_alpha(w ** 2 * diag / z, k).exp()
    theta = torch.stack([torch.linalg.solve(h + torch.diag(alpha[r] * diag), h @ w[r]) for r in range(8)])
    expected = best_log_alpha(theta ** 2 * diag / z, k)
    got, _, _ = learn_log_alpha(w, h, steps=1, inner=64, beta=0.5)  # PCG run to convergence: the exact θ-step
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    _, _, trace = learn_log_alpha(w, h, steps=8, inner=2, beta=0.5, trace=True)
    assert len(trace) == 9 and all(b <= a * (1 + 1e-12) for a, b in zip(trace, trace[1:])) and trace[-1] < trace[0]


def test_vardrop_prunes_the_highest_alpha_per_row_and_keeps_dense_values():
    x = correlated_inputs(tokens=512, features=32)
    stats = stats_for(x)
    w = torch.randn(16, 32)
    algorithm = get_algorithm("vardrop")
    beta = beta_for_target(w, stats.hessian, 0.5, algorithm.log_alpha_at)  # the default: β from the target
    log_alpha, theta, _ = learn_log_alpha(w, stats.hessian, algorithm.steps, algorithm.inner, beta)
    c = theta ** 2 * torch.diagonal(stats.hessian)[None, :]
    out = algorithm.prune(w, stats, Pattern(0.5, scope=algorithm.default_scope))
    assert algorithm.default_scope == "row"
    assert torch.equal(out == 0, kept_by_row(c, 16))
    # c orders the weights as −log α does wherever log α is strictly ordered: the pruned have the highest α
    kept_alpha = torch.where(out != 0, log_alpha, float("-inf")).amax(dim=1)
    pruned_alpha = torch.where(out == 0, log_alpha, float("inf")).amin(dim=1)
    assert bool((pruned_alpha >= kept_alpha).all())
    assert torch.equal(out[out != 0], w[out != 0])
    assert torch.equal(out, algorithm.prune(w, stats, Pattern(0.5, scope="row")))  # deterministic


def test_vardrop_ranks_the_weights_whose_alpha_saturates_instead_of_pruning_them_by_position():
    """After the optimisation many log α sit at the range's upper end (+20): a −log α score would tie them and
    let position decide; the score c = θ²H_jj still orders them by how far θ was shrunk, the best kept first."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 128, generator=gen) * torch.randn(128, generator=gen).exp()  # uneven column scales
    stats = stats_for(x)
    w = 0.05 * torch.randn(64, 128, generator=gen)
    algorithm = get_algorithm("vardrop", beta=1.0)  # a fixed β large enough to saturate
    log_alpha, theta, _ = learn_log_alpha(w, stats.hessian, algorithm.steps, algorithm.inner, algorithm.beta)
    saturated = log_alpha >= log_alpha.max() - 1e-6
    assert saturated.float().mean() > 0.2  # the situation this guards against (27% of weights here)
    c = theta ** 2 * torch.diagonal(stats.hessian)[None, :]
    assert c[saturated].unique().numel() == int(saturated.sum())  # no ties left among them
    scores = algorithm.scores(w, stats)
    torch.testing.assert_close(scores, c, rtol=0, atol=0)


def test_vardrop_beta_for_target_puts_exactly_the_target_above_the_threshold_at_the_start():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(512, 48, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, 48, dtype=torch.float64)
    h = x.T @ x
    w = torch.randn(24, 48, generator=gen, dtype=torch.float64)
    diag = torch.diagonal(h)[None, :]
    z = float(((w @ h) * w).sum())
    for sparsity, at in ((0.5, -3.0), (0.7, -3.0), (0.3, 0.0)):
        beta = beta_for_target(w, h, sparsity, at)
        log_alpha = best_log_alpha(w ** 2 * diag / z, beta / w.numel())
        # the s-quantile weight sits on the threshold (table interpolation: |error| < 1e-3); all below it are above
        above = int((log_alpha > at + 1e-3).sum())
        assert round(sparsity * w.numel()) - 1 <= above <= round(sparsity * w.numel())
        assert int((log_alpha > at - 1e-3).sum()) >= round(sparsity * w.numel())
    # a larger target needs a larger β (more noise), and the pruned count is exact whatever β
    assert beta_for_target(w, h, 0.7, -3.0) > beta_for_target(w, h, 0.5, -3.0)
    stats = stats_for(x.float())
    for s in (0.5, 0.7):
        out = get_algorithm("vardrop").prune(w.float(), stats, Pattern(s, scope="row"))
        same_count = get_algorithm("magnitude").prune(w.float(), None, Pattern(s, scope="row"))  # per-row rounding
        assert torch.equal((out == 0).sum(1), (same_count == 0).sum(1))
    with pytest.raises(ValueError):
        get_algorithm("vardrop", beta=0.0)


# ---- bias indicator and random N:M -------------------------------------------------------------------------

def test_bias_prunes_output_units_of_smallest_bias_and_is_na_without_biases():
    model = tiny_model("opt")
    adapter = ModelAdapter(model)
    with torch.no_grad():
        for _, layer in adapter.named_prunable_layers():
            layer.bias.normal_()  # tiny models start with zero biases
    biases = {n: l.bias.detach().clone() for n, l in adapter.named_prunable_layers()}
    prune_model(model, get_algorithm("bias"), Pattern(0.25), None, progress=False)
    for name, layer in adapter.named_prunable_layers():
        w = adapter.get_weight(layer)
        rows = w.shape[0] // 4
        dead = torch.argsort(biases[name].abs(), stable=True)[:rows]
        assert torch.equal((w == 0).all(dim=1).nonzero().flatten().sort().values, dead.sort().values), name
        assert int((w == 0).sum()) == int(w.numel() * 0.25)
    with pytest.raises(NotApplicable, match="no bias"):
        prune_model(tiny_model("llama"), get_algorithm("bias"), Pattern(0.5), None, progress=False)
    with pytest.raises(NotApplicable, match="N:M"):
        get_algorithm("bias").prune(torch.randn(4, 8), LayerStats(0, extra={"bias": torch.randn(4)}), Pattern(n=2, m=4))


def test_random_n_m_pattern_is_exact_and_repeatable():
    w = torch.randn(16, 64)
    algorithm = get_algorithm("random", seed=3)
    out = algorithm.prune(w, None, Pattern(n=2, m=4))
    assert torch.equal((out == 0).view(16, -1, 4).sum(-1), torch.full((16, 16), 2))
    assert torch.equal(out, algorithm.prune(w, None, Pattern(n=2, m=4)))
    assert not torch.equal(out == 0, get_algorithm("random", seed=4).prune(w, None, Pattern(n=2, m=4)) == 0)


# ---- registries --------------------------------------------------------------------------------------------

def test_a_new_statistic_and_a_new_step_plug_in_without_touching_the_engine():
    register_stat(StatKind("abs_sum", "inputs", "Σ_t |x_j|", start=lambda n, d: {"abs_sum": torch.zeros(n, device=d)},
                           add=lambda state, x: state["abs_sum"].add_(x.abs().sum(dim=(0, 1)))))
    calls = []

    def halve_kept(solve):  # a refine-stage step: records that it ran and scales the kept weights
        calls.append(solve.pattern)
        solve.weight = solve.weight / 2

    register_step(PostStep("test-halve", "refine", frozenset({"abs_sum"}), halve_kept))

    @register
    @dataclass
    class L1Activation(PruningAlgorithm):
        name = "test-l1-activation"
        needs = frozenset({"abs_sum"})

        def scores(self, weight, stats):
            return weight.abs() * stats.get("abs_sum")[None, :]

    x = correlated_inputs(tokens=64, features=16)
    acc = StatsAccumulator(16, frozenset({"abs_sum", "sq_norm"}), "cpu")
    acc.add(x[None])
    torch.testing.assert_close(acc.result().get("abs_sum"), x.abs().sum(0))
    model = tiny_model("llama")
    reports = prune_model(model, get_algorithm("test-l1-activation"), Pattern(0.5), random_ids(2, 8), progress=False,
                          post=PostSteps(refine="test-halve"))
    assert len(calls) == len(reports) and all(r.sparsity == 0.5 for r in reports)
    assert PostSteps(refine="test-halve").needs(get_algorithm("magnitude")) >= {"abs_sum"}
    with pytest.raises(ValueError, match="unknown statistic 'nope'"):
        StatsAccumulator(4, frozenset({"nope"}), "cpu")
    with pytest.raises(ValueError, match="unknown refinement"):
        PostSteps(refine="nope")
