"""Layer-wise allocation (uniform / OWL / search): OWL's formula against a slow reference, exact global counts,
the search's budget and its guarantee of not losing to OWL on its own proxy."""
import pytest
import torch

from prunelab.algorithms import get_algorithm
from prunelab.config import PruneConfig
from prunelab.engine import prune_model
from prunelab.engine.allocation import Allocation
from prunelab.models import ModelAdapter
from prunelab.patterns import Pattern
from tiny_models import random_ids, tiny_model


def slow_owl(model, ids, target, m=5.0, lam=0.08):
    """OWL from scratch: hook every prunable layer's input on the dense model, Wanda scores per block,
    outlier ratio, then the authors' rescaling."""
    adapter = ModelAdapter(model)
    inputs = {}
    hooks = [layer.register_forward_hook(lambda mod, i, o, n=n: inputs.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1])))
             for n, layer in adapter.named_prunable_layers()]
    with torch.no_grad():
        for row in ids:
            model(input_ids=row[None])
    for h in hooks:
        h.remove()
    ratios = []
    for i, block in enumerate(adapter.blocks):
        scores = []
        for name, layer in adapter.prunable_layers(block).items():
            x = torch.cat(inputs[f"{adapter.family.blocks}.{i}.{name}"])
            scores.append((adapter.get_weight(layer).abs() * x.norm(dim=0)[None, :]).flatten())
        flat = torch.cat(scores)
        ratios.append(int((flat > m * flat.mean()).sum()) / flat.numel())
    lo, hi = min(ratios), max(ratios)
    scaled = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    return [target - (d - sum(scaled) / len(scaled)) for d in scaled], ratios


def zeros_of(model):
    adapter = ModelAdapter(model)
    return {n: int((adapter.get_weight(l) == 0).sum()) for n, l in adapter.named_prunable_layers()}


@pytest.mark.parametrize("family,scope", [("gemma2", "row"), ("opt", "layer")])
def test_owl_matches_its_definition_and_keeps_the_global_count(family, scope):
    ids = random_ids(4, 16)
    expected, ratios = slow_owl(tiny_model(family), ids, 0.6)
    uniform = tiny_model(family)
    prune_model(uniform, get_algorithm("wanda"), Pattern(0.6, scope=scope), ids, progress=False)
    model = tiny_model(family)
    allocation = Allocation("owl")
    reports = prune_model(model, get_algorithm("wanda"), Pattern(0.6, scope=scope), ids, progress=False,
                          allocation=allocation)
    assert allocation.info["outlier_ratio"] == pytest.approx(ratios, abs=1e-6)
    assert allocation.info["owl_block_sparsity"] == pytest.approx(expected, abs=1e-9)
    assert max(expected) - min(expected) == pytest.approx(0.16)  # the spread is 2λ
    assert sum(zeros_of(model).values()) == sum(zeros_of(uniform).values())  # global count exact
    adapter = ModelAdapter(model)
    for r in reports:  # each layer got its block's share, up to one unit of rounding
        block = int(r.name[len(adapter.family.blocks) + 1:].split(".")[0])
        rows, cols = r.shape
        unit = 1 / cols if scope == "row" else 1 / (rows * cols)
        assert abs(r.sparsity - expected[block]) <= unit + 1e-12, r.name
        assert r.sparsity == pytest.approx(allocation.info["layer_sparsity"][r.name])
    assert set(allocation.info["layer_sparsity"]) == {n for n, _ in adapter.named_prunable_layers()}


def test_search_stays_in_budget_never_loses_to_owl_on_its_proxy_and_keeps_the_count():
    ids = random_ids(6, 16)
    uniform = tiny_model("gemma2")
    prune_model(uniform, get_algorithm("magnitude"), Pattern(0.7), ids, progress=False)
    runs = []
    for _ in range(2):
        model = tiny_model("gemma2")
        allocation = Allocation("search", search_budget=30, search_samples=2)
        prune_model(model, get_algorithm("magnitude"), Pattern(0.7), ids, progress=False, allocation=allocation)
        search = allocation.info["search"]
        assert search["forward_passes"] <= 30 and search["samples_per_candidate"] == 2
        assert len(search["trace"]) == search["forward_passes"] // 2 == 2 + 4 * 3  # uniform, OWL, 3 generations
        assert search["proxy_loss_best"] <= search["proxy_loss_owl"]
        blocks = allocation.info["block_sparsity"]
        assert all(0.55 - 1e-9 <= s <= 0.85 + 1e-9 for s in blocks)  # within search_max_shift of the target
        assert sum(zeros_of(model).values()) == sum(zeros_of(uniform).values())
        runs.append((blocks, zeros_of(model)))
    assert runs[0] == runs[1]  # same seed, same allocation and masks


def test_allocation_is_validated_with_the_config():
    with pytest.raises(ValueError, match="does not apply to an N:M pattern"):
        PruneConfig(method="wanda", pattern="2:4", allocation="owl")
    with pytest.raises(ValueError, match="unknown allocation"):
        PruneConfig(method="wanda", sparsity=0.5, allocation="nope")
    config = PruneConfig(method="wanda", sparsity=0.5, allocation="owl", method_options={"owl_lambda": 0.1})
    assert config.method_options == {} and config.allocation_obj().owl_lambda == 0.1
    assert config.needs_calibration and PruneConfig(method="magnitude", sparsity=0.5, allocation="owl").needs_calibration
    plain = PruneConfig(method="wanda", sparsity=0.5, allocation="uniform").to_dict()
    assert plain["allocation"] is None and "allocation_options" not in plain  # run keys as before
