"""The sequential engine: prune a model block by block on calibration activations.

For each decoder block: hook its prunable layers' inputs and accumulate the statistics the algorithm asks for
(layers fed the same tensor, like q/k/v, share one accumulator), let the algorithm solve each layer, then
re-run the block with pruned weights so its outputs become the next block's inputs. Only the current block
and the calibration activations (n × seqlen × hidden, twice) live on the compute device; the model stays
where it was loaded. Methods that need no statistics (magnitude) never run a forward pass.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..algorithms.base import PruningAlgorithm
from ..algorithms.dsnot import dsnot_refine
from ..algorithms.refit import refit_on_support
from ..models.adapters import BlockCall, ModelAdapter
from ..patterns import Pattern
from ..stats import LayerStats, StatsAccumulator


REFINERS = ("dsnot", "dsnot-h")  # dsnot-h: DSnoT moves kept only when they lower the true error (XᵀX)


@dataclass(frozen=True)
class PostSteps:
    """What the engine does around the algorithm, for any method.

    refine: "dsnot" revises the method's mask without changing kept values (needs column norms and means);
    refit: least-squares weights on the final support by PCG (ALPS's last step; needs XᵀX);
    diagnostics: collect XᵀX so every layer's reconstruction error is recorded. None ("auto") does so whenever
    calibration passes run anyway; True forces them even for data-free methods (magnitude), False never;
    bias_correction: add (Ŵ − W)·E[x] to a layer's bias so its mean output is kept (None: the algorithm's
    default, on for MAMA).
    """
    refine: str | None = None
    refit: bool = False
    diagnostics: bool | None = None
    bias_correction: bool | None = None

    def __post_init__(self):
        if self.refine is not None and self.refine not in REFINERS:
            raise ValueError(f"unknown refinement {self.refine!r}; available: {', '.join(REFINERS)}")

    def corrects_bias(self, algorithm) -> bool:
        return getattr(algorithm, "corrects_bias", False) if self.bias_correction is None else self.bias_correction

    def needs(self, algorithm) -> frozenset[str]:
        needs = set(algorithm.needs)
        if self.refine:
            needs |= {"sq_norm", "mean"} | ({"hessian"} if self.refine == "dsnot-h" else set())
        if self.corrects_bias(algorithm):
            needs.add("mean")
        if self.refit or self.diagnostics or (self.diagnostics is None and needs):
            needs.add("hessian")
        return frozenset(needs)

    def to_dict(self) -> dict:
        return {"refine": self.refine, "refit": self.refit, "diagnostics": self.diagnostics,
                "bias_correction": self.bias_correction}


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sparsity: float  # measured fraction of exact zeros after pruning
    seconds: float  # time spent in the algorithm (and refine/refit) for this layer
    reconstruction_error: float | None = None  # ‖X(Ŵ−W)‖_F / ‖XŴ‖_F from XᵀX, when the Hessian was collected
    error_before_refit: float | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "sparsity": self.sparsity, "seconds": self.seconds,
                "reconstruction_error": self.reconstruction_error, "error_before_refit": self.error_before_refit}


def relative_reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖XŴ − XW‖_F / ‖XŴ‖_F computed from H = XᵀX without another forward pass (products in fp32, sums in fp64)."""
    dtype = torch.promote_types(torch.float32, hessian.dtype)  # fp32, or fp64 when given an fp64 Hessian
    h, dense = hessian.to(dtype), dense.to(dtype)
    diff = dense - pruned.to(dtype)
    num = ((diff @ h) * diff).sum(dtype=torch.float64).clamp_min(0)
    den = ((dense @ h) * dense).sum(dtype=torch.float64)
    return float((num / den).sqrt()) if den > 0 else float("nan")


def accepts_prior(algorithm) -> bool:
    """Whether ``algorithm.prune`` takes ``prior`` (weights already pruned, to be kept pruned)."""
    return "prior" in inspect.signature(algorithm.prune).parameters


def solve_weight(dense: torch.Tensor, algorithm, stats: LayerStats | None, pattern, post: PostSteps, name: str = "?",
                 prior: torch.Tensor | None = None):
    """The algorithm plus post-steps on one dense weight: (pruned weight, error before refit or None, seconds).

    ``prior`` (bool, True = already pruned): those weights stay zero. Methods that accept it choose them first
    (so the count is exact when the target is at least the prior's); for any other method they are zeroed after
    it ran, which can only add zeros."""
    start = time.perf_counter()
    if prior is not None and accepts_prior(algorithm):
        pruned = algorithm.prune(dense, stats, pattern, prior=prior)
    else:
        pruned = algorithm.prune(dense, stats, pattern)
    if post.refine in REFINERS:
        pruned = dsnot_refine(dense, pruned, stats, pattern,
                              hessian=stats.require_hessian() if post.refine == "dsnot-h" else None)
    if prior is not None:
        pruned = pruned.masked_fill(prior, 0.0)
    before_refit = None
    if post.refit:
        before_refit = relative_reconstruction_error(dense, pruned, stats.hessian)
        pruned = refit_on_support(dense, stats.hessian, pruned != 0, w0=pruned)
    seconds = time.perf_counter() - start
    if pruned.shape != dense.shape or not torch.isfinite(pruned).all():
        raise RuntimeError(f"{algorithm.name} returned a bad weight for {name} (shape {tuple(pruned.shape)}, "
                           f"finite={bool(torch.isfinite(pruned).all())})")
    return pruned, before_refit, seconds


def _as_is(adapter: ModelAdapter, name: str, layer, seconds: float = 0.0) -> LayerReport:
    """Report a layer's current state (used where no solve ran)."""
    weight = adapter.get_weight(layer)
    return LayerReport(name, tuple(weight.shape), float((weight == 0).float().mean()), seconds)


def _solve_layer(adapter, name, layer, algorithm, stats: LayerStats | None, pattern, post: PostSteps,
                 prior: torch.Tensor | None = None) -> LayerReport:
    dense = adapter.get_weight(layer).float()
    prior = None if prior is None else prior.to(dense.device)
    pruned, before_refit, seconds = solve_weight(dense, algorithm, stats, pattern, post, name, prior)
    error = None
    if stats is not None and stats.hessian is not None:
        error = relative_reconstruction_error(dense, pruned, stats.hessian)
    bias = getattr(layer, "bias", None)
    if bias is not None and post.corrects_bias(algorithm) and stats is not None and stats.mean_sum is not None:
        # Keep the layer's mean output: E[Ŵx + b] = E[Wx + b'] ⇒ b' = b + (Ŵ − W)·E[x].
        bias.data.add_(((dense - pruned) @ stats.column_mean().to(dense)).to(bias.dtype))
    adapter.set_weight(layer, pruned)
    sparsity = float((adapter.get_weight(layer) == 0).float().mean())
    return LayerReport(name, tuple(dense.shape), sparsity, seconds, error, before_refit)


def _prune_global(adapter: ModelAdapter, algorithm: PruningAlgorithm, pattern: Pattern,
                  prior_masks: dict | None = None) -> list[LayerReport]:
    """One threshold across all prunable layers (data-free scores only); exact count, ties in layer order.
    Weights in ``prior_masks`` score -inf, so they are pruned first."""
    layers = list(adapter.named_prunable_layers())
    scores = []
    for name, layer in layers:
        s = algorithm.scores(adapter.get_weight(layer).float(), None)
        prior = (prior_masks or {}).get(name)
        scores.append((s if prior is None else s.masked_fill(prior.to(s.device), float("-inf"))).flatten())
    flat = torch.cat(scores)
    k = int(flat.numel() * pattern.sparsity)
    reports = []
    if k == 0:
        return [_as_is(adapter, n, l) for n, l in layers]
    threshold = flat.kthvalue(k).values
    tie_budget = k - int((flat < threshold).sum())
    del flat
    for (name, layer), s in zip(layers, scores):
        start = time.perf_counter()
        pruned_mask = s < threshold
        ties = torch.nonzero(s == threshold).flatten()[:tie_budget]
        pruned_mask[ties] = True
        tie_budget -= ties.numel()
        weight = adapter.get_weight(layer)
        adapter.set_weight(layer, weight.float().masked_fill(pruned_mask.view_as(weight), 0.0))
        reports.append(_as_is(adapter, name, layer, time.perf_counter() - start))
    return reports


def _collect_stats(adapter, block, layers: dict, inputs, call: BlockCall, needs, device) -> dict[str, LayerStats]:
    """Run the block on every calibration sample, accumulating input statistics per layer."""
    # Sample 0 is run with recording hooks to learn which layers share an input tensor.
    seen: dict[str, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, inp, out, n=name: seen.__setitem__(n, inp[0]))
               for name, layer in layers.items()]
    with torch.no_grad():
        adapter.run_block(block, inputs[0:1].to(device), call)
    for h in handles:
        h.remove()
    leaders: dict[str, str] = {}  # layer name -> name of the layer whose accumulator it shares
    for name in layers:
        leaders[name] = next((other for other in leaders if leaders[other] == other and seen[other] is seen[name]), name)
    accumulators = {name: StatsAccumulator(seen[name].shape[-1], needs, device)
                    for name in layers if leaders[name] == name}
    for name, acc in accumulators.items():
        acc.add(seen[name])
    seen.clear()
    handles = [layers[name].register_forward_hook(lambda m, inp, out, a=acc: a.add(inp[0]))
               for name, acc in accumulators.items()]
    try:
        with torch.no_grad():
            for i in range(1, inputs.shape[0]):
                adapter.run_block(block, inputs[i:i + 1].to(device), call)
    finally:
        for h in handles:
            h.remove()
    return {name: accumulators[leaders[name]].result() for name in layers}


def prune_model(model, algorithm: PruningAlgorithm, pattern: Pattern, calibration: torch.Tensor | None = None,
                device: str | torch.device = "cpu", progress: bool = True,
                post: PostSteps | None = None, prior_masks: dict[str, torch.Tensor] | None = None) -> list[LayerReport]:
    """Prune every prunable layer of ``model`` in place; returns one report per layer in model order.

    ``calibration`` is a LongTensor (n, seqlen) of token ids, required when the algorithm or ``post`` needs
    input statistics. ``prior_masks`` (layer name -> bool (out, in), True = already pruned; see
    train/masks.py) are kept pruned, so a step of iterative pruning only adds zeros.
    """
    priors = prior_masks or {}
    post = post or PostSteps()
    adapter = ModelAdapter(model)
    device = torch.device(device)
    if pattern.is_noop:
        return [_as_is(adapter, n, l) for n, l in adapter.named_prunable_layers()]
    needs = post.needs(algorithm)
    if pattern.scope == "global":
        if needs or "global" not in algorithm.scopes:
            raise ValueError(f"global scope needs data-free scores and no calibrated post-steps; "
                             f"{algorithm.name} with these options does not support it")
        return _prune_global(adapter, algorithm, pattern, priors)

    reports: list[LayerReport] = []
    bar = tqdm(total=len(adapter.blocks), desc=f"{algorithm.name} {pattern.describe()}", unit="block",
               disable=not progress)
    if not needs:
        for i, block in enumerate(adapter.blocks):
            for name, layer in adapter.prunable_layers(block).items():
                full = f"{adapter.family.blocks}.{i}.{name}"
                reports.append(_solve_layer(adapter, full, layer, algorithm, None, pattern, post, priors.get(full)))
            bar.update()
        bar.close()
        return reports

    if calibration is None or calibration.ndim != 2 or calibration.shape[0] < 1:
        raise ValueError(f"{algorithm.name} needs calibration token ids of shape (n, seqlen)")
    for i, block, layers, stats in calibrated_blocks(adapter, calibration, needs, device):
        for name, layer in layers.items():
            full = f"{adapter.family.blocks}.{i}.{name}"
            reports.append(_solve_layer(adapter, full, layer, algorithm, stats[name], pattern, post, priors.get(full)))
        bar.update()
    bar.close()
    return reports


def calibrated_blocks(adapter: ModelAdapter, calibration: torch.Tensor, needs, device):
    """Yield (index, block, layers, stats) for each block, with the block on ``device``; after the caller has
    modified the block, run it to produce the next block's inputs (so pruning propagates)."""
    calls = adapter.record_block_calls(calibration)
    inputs = adapter.block_inputs(calibration)
    outputs = torch.empty_like(inputs)
    for i, block in enumerate(adapter.blocks):
        home = next(block.parameters()).device
        block.to(device)
        call = calls[i].to(device)
        layers = adapter.prunable_layers(block)
        stats = _collect_stats(adapter, block, layers, inputs, call, needs, device)
        yield i, block, layers, stats
        del stats
        if i + 1 < len(adapter.blocks):  # the last block's outputs would feed nothing
            with torch.no_grad():
                for s in range(inputs.shape[0]):
                    outputs[s:s + 1] = adapter.run_block(block, inputs[s:s + 1].to(device), call).to(outputs.device)
        block.to(home)
        inputs, outputs = outputs, inputs
