"""Gradient statistics (engine/gradients.py) against plain whole-model autograd, sequence by sequence."""
import pytest
import torch
import torch.nn.functional as F

from prunelab.engine.gradients import collect_gradients
from prunelab.models import ModelAdapter
from tiny_models import random_ids, tiny_model


def slow_gradients(model, ids):
    """Σ_s g_s and Σ_s g_s² with g_s = ∂(mean next-token NLL of sequence s)/∂W, whole model, one sequence each."""
    adapter = ModelAdapter(model)
    layers = dict(adapter.named_prunable_layers())
    sums = {n: [0, 0] for n in layers}
    for row in ids:
        model.zero_grad()
        logits = model(input_ids=row[None]).logits[0, :-1].float()
        F.cross_entropy(logits, row[1:]).backward()
        for n, layer in layers.items():
            g = adapter.oriented(layer, layer.weight.grad).detach().clone()
            sums[n][0] = sums[n][0] + g
            sums[n][1] = sums[n][1] + g * g
    model.zero_grad()
    return sums


@pytest.mark.parametrize("family", ["llama", "gemma2", "opt", "gpt2"])
def test_block_by_block_gradients_equal_whole_model_autograd(family):
    model = tiny_model(family)
    ids = random_ids(3, 12)
    expected = slow_gradients(model, ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # chunk_bytes=1: one sequence per chunk, so the chunking path runs too
    for chunk_bytes in (1, 2**30):
        got = collect_gradients(ModelAdapter(model), ids, {"grad", "grad_sq"}, "cpu", progress=False,
                                chunk_bytes=chunk_bytes)
        assert set(got) == set(expected)
        for name, (g, g2) in expected.items():
            assert got[name]["samples"] == 3
            # fp32 sums of the same products in another order: differences at float rounding of |g|
            torch.testing.assert_close(got[name]["grad"], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()))
            torch.testing.assert_close(got[name]["grad_sq"], g2, rtol=1e-4, atol=1e-6 * float(g2.abs().max()))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # weights untouched
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags  # and left as they were
    assert all(p.grad is None for p in model.parameters())


def test_a_repeated_request_reuses_the_last_result_and_other_weights_recompute():
    from prunelab.engine import gradients

    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    ids = random_ids(2, 8)
    gradients.clear_cache()
    first = collect_gradients(adapter, ids, {"grad_sq"}, "cpu", progress=False)
    again = collect_gradients(adapter, ids, {"grad_sq"}, "cpu", progress=False)
    name = next(iter(first))
    assert again[name]["grad_sq"] is first[name]["grad_sq"]  # the kept result, not a recomputation
    with torch.no_grad():
        adapter.blocks[0].mlp.up_proj.weight[0, 0] += 1.0
    changed = collect_gradients(adapter, ids, {"grad_sq"}, "cpu", progress=False)
    assert changed[name]["grad_sq"] is not first[name]["grad_sq"]
    assert not torch.equal(changed["model.layers.0.mlp.up_proj"]["grad_sq"], first["model.layers.0.mlp.up_proj"]["grad_sq"])
    # a kind not kept: computed together with the kept one, so that alternating methods share one pass
    other = collect_gradients(adapter, ids, {"grad"}, "cpu", progress=False)
    assert set(other[name]) == {"grad", "samples"} and gradients._CACHE["kinds"] == {"grad", "grad_sq"}
    back = collect_gradients(adapter, ids, {"grad_sq"}, "cpu", progress=False)
    assert back[name]["grad_sq"] is gradients._CACHE["sums"][name]["grad_sq"]
    alone = collect_gradients(adapter, ids, {"grad"}, "cpu", progress=False, cache=False)
    for layer in changed:  # each kind's sums are the same as when computed alone
        assert torch.equal(back[layer]["grad_sq"], changed[layer]["grad_sq"])
        assert torch.equal(other[layer]["grad"], alone[layer]["grad"])
