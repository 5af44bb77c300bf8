"""The sequential engine on tiny random models of every family."""
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from prunelab.algorithms import available, get_algorithm, register
from prunelab.algorithms.magnitude import Magnitude
from prunelab.engine import EngineOptions, prune_model
from prunelab.models import ModelAdapter
from prunelab.patterns import Pattern
from tiny_models import FAMILY_NAMES, assert_fp32_sums_close, random_ids, tiny_model

PATTERNS = {"u50": Pattern(0.5), "2:4": Pattern(n=2, m=4)}


def expected_zeros(shape, pattern, scope):
    rows, cols = shape
    if pattern.is_nm:
        return rows * cols * pattern.n // pattern.m
    if scope == "row":
        return rows * int(cols * pattern.sparsity)
    return int(rows * cols * pattern.sparsity)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_every_family_prunes_to_the_exact_pattern(family, method, pattern_name):
    model = tiny_model(family)
    algorithm = get_algorithm(method)
    pattern = PATTERNS[pattern_name]
    if not pattern.is_nm:
        pattern = Pattern(0.5, scope=algorithm.default_scope)
    reports = prune_model(model, algorithm, pattern, random_ids(4, 16), progress=False)
    adapter = ModelAdapter(model)
    layers = dict(adapter.named_prunable_layers())
    assert [r.name for r in reports] == list(layers)
    for r in reports:
        w = adapter.get_weight(layers[r.name])
        zeros = int((w == 0).sum())
        assert zeros == expected_zeros(w.shape, pattern, pattern.scope), r.name
        assert r.sparsity == pytest.approx(zeros / w.numel())
        if pattern.is_nm:
            assert torch.equal((w == 0).view(w.shape[0], -1, 4).sum(-1), torch.full((w.shape[0], w.shape[1] // 4), 2))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=random_ids(1, 16, seed=9)).logits).all()
    if method == "sparsegpt":
        assert all(r.reconstruction_error is not None and 0 <= r.reconstruction_error < 1.5 for r in reports)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_pruning_is_deterministic(family):
    states = []
    for _ in range(2):
        model = tiny_model(family)
        prune_model(model, get_algorithm("sparsegpt"), Pattern(0.6), random_ids(4, 16), progress=False)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_zero_sparsity_is_a_noop():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_model(model, get_algorithm("sparsegpt"), Pattern(0.0), random_ids(2, 8), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_embeddings_and_head_are_never_pruned():
    model = tiny_model("gpt2")  # tied embeddings
    embed = model.get_input_embeddings().weight.clone()
    prune_model(model, get_algorithm("magnitude"), Pattern(0.9), progress=False)
    assert torch.equal(model.get_input_embeddings().weight, embed)


def test_global_magnitude_uses_one_threshold_with_exact_count():
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    dense = torch.cat([adapter.get_weight(l).abs().flatten().clone() for _, l in adapter.named_prunable_layers()])
    prune_model(model, get_algorithm("magnitude"), Pattern(0.7, scope="global"), progress=False)
    after = torch.cat([adapter.get_weight(l).flatten() for _, l in adapter.named_prunable_layers()])
    pruned = after == 0
    assert int(pruned.sum()) == int(dense.numel() * 0.7)
    assert dense[pruned].max() <= dense[~pruned].min()
    per_layer = [float((adapter.get_weight(l) == 0).float().mean()) for _, l in adapter.named_prunable_layers()]
    assert max(per_layer) - min(per_layer) > 0.01  # global scope gives non-uniform layer sparsity


def test_global_scope_is_refused_for_calibrated_methods():
    with pytest.raises(ValueError, match="global scope"):
        prune_model(tiny_model("llama"), get_algorithm("wanda"), Pattern(0.5, scope="global"), random_ids(2, 8),
                    progress=False)


@register
@dataclass
class RecordingMagnitude(Magnitude):
    """A plug-in algorithm (registered from outside the package) that keeps the statistics it was given."""
    name = "test-recording"
    needs = frozenset({"hessian"})
    seen = {}

    def prune(self, weight, stats, pattern):
        RecordingMagnitude.seen[len(RecordingMagnitude.seen)] = stats
        return super().prune(weight, stats, pattern)


def test_later_blocks_are_calibrated_on_outputs_of_pruned_earlier_blocks():
    model = tiny_model("llama")
    ids = random_ids(3, 12)
    RecordingMagnitude.seen.clear()
    prune_model(model, get_algorithm("test-recording"), Pattern(0.5), ids, progress=False)
    adapter = ModelAdapter(model)
    names = [n for n, _ in adapter.named_prunable_layers()]
    # q_proj of block 1 is fed by block 0 (now pruned) through block 1's input norm, untouched by pruning
    # block 1 itself: its inputs in the final model are exactly what the engine calibrated it on.
    q1 = names.index("model.layers.1.self_attn.q_proj")
    captured = []
    handle = model.model.layers[1].self_attn.q_proj.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        for row in ids:
            model(input_ids=row[None])
    handle.remove()
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])
    stats = RecordingMagnitude.seen[q1]
    assert (stats.n_tokens, stats.n_samples) == (36, 3)  # each calibration row counts as one sequence (DSnoT's unit)
    assert_fp32_sums_close(stats.hessian, x, x)
    # q, k and v share one input, hence one accumulator.
    k1 = names.index("model.layers.1.self_attn.k_proj")
    assert RecordingMagnitude.seen[k1].hessian is stats.hessian


def test_wide_inputs_accumulate_the_hessian_by_panels_and_stay_exactly_symmetric():
    from prunelab.stats import StatsAccumulator

    # 1100 inputs = three row panels; batches of 2 sequences, and a result read between batches
    torch.manual_seed(0)
    batches = [torch.randn(2, 7, 1100) for _ in range(3)]
    acc = StatsAccumulator(1100, frozenset({"hessian"}), "cpu")
    acc.add(batches[0])
    acc.result()
    for x in batches[1:]:
        acc.add(x)
    hessian = acc.result().hessian
    x = torch.cat([b.reshape(-1, 1100) for b in batches])
    assert torch.equal(hessian, hessian.T)
    assert_fp32_sums_close(hessian, x, x)
    assert torch.equal(acc.result().column_sq_norm(), torch.diagonal(hessian))


def test_calibrated_method_without_calibration_is_refused():
    with pytest.raises(ValueError, match="needs calibration token ids"):
        prune_model(tiny_model("llama"), get_algorithm("wanda"), Pattern(0.5), None, progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_pruned_with_fp32_math(dtype):
    model = tiny_model("qwen2").to(dtype)
    reports = prune_model(model, get_algorithm("sparsegpt"), Pattern(n=2, m=4), random_ids(4, 16), progress=False)
    adapter = ModelAdapter(model)
    for _, layer in adapter.named_prunable_layers():
        assert layer.weight.dtype == dtype
        w = adapter.get_weight(layer)
        assert torch.equal((w == 0).view(w.shape[0], -1, 4).sum(-1), torch.full((w.shape[0], w.shape[1] // 4), 2))
    assert all(r.reconstruction_error is not None and r.reconstruction_error < 1 for r in reports)


from prunelab.engine import PostSteps  # noqa: E402


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_refit_lowers_reconstruction_error_on_every_layer(method):
    model = tiny_model("llama")
    algorithm = get_algorithm(method)
    reports = prune_model(model, algorithm, Pattern(0.6, scope=algorithm.default_scope), random_ids(4, 16),
                          progress=False, post=PostSteps(refit=True))
    for r in reports:
        assert r.reconstruction_error <= r.error_before_refit * (1 + 1e-4) + 1e-7, r.name
    assert sum(r.reconstruction_error for r in reports) < 0.9 * sum(r.error_before_refit for r in reports)
    assert all(r.sparsity >= 0.59 for r in reports)  # the refit never un-prunes


def test_dsnot_refinement_keeps_the_pattern():
    model = tiny_model("llama")
    prune_model(model, get_algorithm("wanda"), Pattern(n=2, m=4), random_ids(4, 16), progress=False,
                post=PostSteps(refine="dsnot"))
    adapter = ModelAdapter(model)
    for _, layer in adapter.named_prunable_layers():
        w = adapter.get_weight(layer)
        assert torch.equal((w == 0).view(w.shape[0], -1, 4).sum(-1), torch.full((w.shape[0], w.shape[1] // 4), 2))


def test_diagnostics_come_with_the_hessian_and_are_opt_in_for_score_methods():
    ids = random_ids(2, 8)
    sgpt = prune_model(tiny_model("llama"), get_algorithm("sparsegpt"), Pattern(0.5), ids, progress=False)
    assert all(r.reconstruction_error is not None for r in sgpt)  # XᵀX is collected anyway
    wanda = prune_model(tiny_model("llama"), get_algorithm("wanda"), Pattern(0.5, scope="row"), ids, progress=False)
    assert all(r.reconstruction_error is None for r in wanda)  # only column norms: no XᵀX unless asked
    wanda = prune_model(tiny_model("llama"), get_algorithm("wanda"), Pattern(0.5, scope="row"), ids, progress=False,
                        post=PostSteps(diagnostics=True))
    assert all(r.reconstruction_error is not None for r in wanda)
    plain = prune_model(tiny_model("llama"), get_algorithm("magnitude"), Pattern(0.5), None, progress=False)
    assert all(r.reconstruction_error is None for r in plain)
    forced = prune_model(tiny_model("llama"), get_algorithm("magnitude"), Pattern(0.5), ids, progress=False,
                         post=PostSteps(diagnostics=True))
    assert all(r.reconstruction_error is not None for r in forced)


def test_mama_keeps_the_mean_output_through_the_bias():
    model = tiny_model("opt")  # OPT layers have biases
    ids = random_ids(3, 16)
    layer = model.model.decoder.layers[0].self_attn.q_proj  # its inputs do not depend on any pruning
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        for row in ids:
            model(input_ids=row[None])
    handle.remove()
    x = torch.cat(captured)
    dense_mean = (x @ layer.weight.T + layer.bias).mean(0).detach().clone()
    prune_model(model, get_algorithm("mama"), Pattern(0.6), ids, progress=False)
    pruned_mean = (x @ layer.weight.T + layer.bias).mean(0).detach()
    assert (layer.weight == 0).float().mean() == pytest.approx(0.6, abs=0.01)
    torch.testing.assert_close(pruned_mean, dense_mean, rtol=1e-4, atol=1e-5)


def _recorded_hessians(options, ids, family="llama"):
    RecordingMagnitude.seen.clear()
    model = tiny_model(family)
    info = {}
    prune_model(model, get_algorithm("test-recording"), Pattern(0.5), ids, progress=False,
                options=EngineOptions(**options), info=info)
    return [s.hessian for s in RecordingMagnitude.seen.values()], model, info


def test_batched_forwards_give_the_statistics_of_one_sequence_at_a_time():
    ids = random_ids(5, 12)
    model = tiny_model("llama")
    captured = []  # block 0's q_proj input: the normed embeddings, the same whatever the batching
    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    x = captured[0].reshape(-1, captured[0].shape[-1])
    for batch in (1, 3):  # 3: batches of 3 and 2, a partial last batch
        hessians, _, info = _recorded_hessians({"batch_size": batch}, ids)
        assert info["batch_size"] == batch
        assert_fp32_sums_close(hessians[0], x, x)  # XᵀX summed per sequence or per batch: fp32 rounding only


@pytest.mark.parametrize("wanted", [{"self_attn.k_proj"}, {"self_attn.o_proj", "mlp.down_proj"}])
def test_statistics_of_chosen_layers_equal_those_of_the_full_collection(wanted):
    from prunelab.engine.sequential import calibrated_blocks

    ids = random_ids(3, 10)
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    needs = frozenset({"hessian", "mean"})
    full = [stats for _, _, _, stats in calibrated_blocks(adapter, ids, needs, "cpu")]
    some = [stats for _, _, _, stats in calibrated_blocks(adapter, ids, needs, "cpu", only_layers=wanted)]
    for everything, chosen in zip(full, some):
        assert set(chosen) == wanted  # k_proj shares q_proj's input: its accumulator is q_proj's, as in the full run
        for name in wanted:
            for field in ("hessian", "mean_sum", "seq_sum_sq"):
                assert torch.equal(getattr(chosen[name], field), getattr(everything[name], field))
    with pytest.raises(ValueError, match="no prunable layers"):
        next(calibrated_blocks(adapter, ids, needs, "cpu", only_layers={"mlp.nope"}))


@pytest.mark.parametrize("place", ["device", "disk"])
def test_where_the_activations_live_never_changes_the_result(place, monkeypatch):
    import prunelab.engine.sequential as sequential

    ids = random_ids(5, 12)
    host, model_host, info = _recorded_hessians({"batch_size": 2}, ids)
    assert info["activations"] == "host"
    # "device" is what a GPU run gets when the activations fit there; on the CPU it is the same code path
    monkeypatch.setattr(sequential, "choose_place", lambda nbytes, device, limit: place)
    other, model_other, info = _recorded_hessians({"batch_size": 2}, ids)
    assert info["activations"] == place
    assert all(torch.equal(a, b) for a, b in zip(host, other))
    assert all(torch.equal(a, b) for a, b in zip(model_host.state_dict().values(), model_other.state_dict().values()))


def test_compute_dtype_bfloat16_keeps_weights_and_statistics_in_fp32():
    ids = random_ids(4, 12)
    fp32, dense_model, _ = _recorded_hessians({"batch_size": 2}, ids)
    bf16, model, info = _recorded_hessians({"batch_size": 2, "compute_dtype": "bfloat16"}, ids)
    assert info["compute_dtype"] == "bfloat16"
    assert all(h.dtype == torch.float32 for h in bf16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # magnitude pruning does not look at the statistics: the saved weights are the fp32 ones, not rounded
    assert all(torch.equal(a, b) for a, b in zip(dense_model.state_dict().values(), model.state_dict().values()))
    for a, b in zip(fp32, bf16):  # bf16 forwards: 8 mantissa bits, so a few percent on the accumulated products
        assert float((a - b).norm() / a.norm()) < 0.05


def test_float64_models_are_pruned_with_float64_statistics_and_math():
    ids = random_ids(4, 12)
    model = tiny_model("llama").double()
    captured = []  # block 0's q_proj input does not depend on any pruning
    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    x = captured[0].reshape(-1, captured[0].shape[-1])
    RecordingMagnitude.seen.clear()
    prune_model(model, get_algorithm("test-recording"), Pattern(0.5), ids, progress=False)
    hessians = [s.hessian for s in RecordingMagnitude.seen.values()]
    assert all(h.dtype == torch.float64 for h in hessians)
    # summed per sequence vs in one product: float64 rounding (~1e-16 per term), not float32's ~1e-7
    torch.testing.assert_close(hessians[0], x.T @ x, rtol=1e-12, atol=1e-12)
    model = tiny_model("llama").double()
    reports = prune_model(model, get_algorithm("sparsegpt"), Pattern(0.5), ids, progress=False)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    for r in reports:
        assert r.zeros == expected_zeros(r.shape, Pattern(0.5), "layer"), r.name


BUILT_IN_METHODS = [n for n in available() if not n.startswith(("test", "broken"))]


@pytest.mark.parametrize("method", BUILT_IN_METHODS)
def test_every_method_prunes_a_float64_model_to_the_exact_count(method):
    """--dtype float64 (the reference mode) works for every method and keeps the model in float64."""
    model = tiny_model("opt").double()  # OPT layers have biases, which the bias method ranks
    algorithm = get_algorithm(method)
    pattern = Pattern(0.5, scope=algorithm.default_scope)
    reports = prune_model(model, algorithm, pattern, random_ids(4, 16), progress=False)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    for r in reports:
        assert r.zeros == expected_zeros(r.shape, pattern, pattern.scope), r.name


def test_global_scope_keeps_a_float64_models_weights_unrounded():
    model = tiny_model("llama").double()
    torch.manual_seed(0)
    with torch.no_grad():  # weights a float32 would round (tiny_model's come from float32)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-9)
    before = {n: ModelAdapter.get_weight(l).clone() for n, l in ModelAdapter(model).named_prunable_layers()}
    prune_model(model, get_algorithm("magnitude"), Pattern(0.5, scope="global"), None, progress=False)
    layers = dict(ModelAdapter(model).named_prunable_layers())
    assert sum(int((ModelAdapter.get_weight(layers[n]) == 0).sum()) for n in before) == \
        sum(w.numel() for w in before.values()) // 2
    for name, dense in before.items():
        w = ModelAdapter.get_weight(layers[name])
        assert torch.equal(w[w != 0], dense[w != 0]), name  # kept weights as they were, not through float32


def test_float64_forwards_of_a_float32_model_keep_its_weights_float32():
    model = tiny_model("llama")
    info = {}
    reports = prune_model(model, get_algorithm("sparsegpt"), Pattern(0.5), random_ids(4, 16), progress=False,
                          options=EngineOptions(compute_dtype="float64"), info=info)
    assert info["compute_dtype"] == "float64"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for r in reports:
        assert r.zeros == expected_zeros(r.shape, Pattern(0.5), "layer"), r.name


def test_block_calls_and_inputs_are_recorded_without_running_any_block():
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    calls = []
    handles = [layer.register_forward_hook(lambda *a: calls.append(1)) for _, layer in adapter.named_prunable_layers()]
    ids = random_ids(3, 12)
    recorded = adapter.record_block_calls(ids)
    inputs = adapter.block_inputs(ids, batch_size=2)
    for h in handles:
        h.remove()
    assert calls == [] and len(recorded) == len(adapter.blocks) and inputs.shape == (3, 12, 32)
    assert all(not hasattr(b, "__dict__") or "forward" not in b.__dict__ for b in adapter.blocks)  # restored


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc")
def test_return_freed_memory_hands_fragmented_heap_pages_back():
    """Freed block temporaries stay in glibc's heap while anything above them is alive (free() only shrinks the
    heap's top); the engine trims once per block. 192 MiB of 64 KiB tensors (below the mmap threshold, so on the
    heap) freed under a live one: the trim must return most of it."""
    from prunelab.engine.sequential import _malloc_trim, return_freed_memory
    if _malloc_trim() is None:
        pytest.skip("not glibc: no malloc_trim")

    def rss() -> int:
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    chunks = [torch.ones(16 * 1024) for _ in range(3072)]
    above = torch.ones(16 * 1024)  # noqa: F841 (kept alive: the heap's top stays in use)
    return_freed_memory()
    del chunks
    freed = rss()
    return_freed_memory()
    assert freed - rss() > 128 * 2**20
