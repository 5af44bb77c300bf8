"""Layer-wise sparsity allocation: how much of the global target S each decoder block gets, for any method.

uniform  every layer gets S (the default; no extra work).
owl      Outlier-Weighed Layerwise sparsity (Yin et al., ICML 2024, arXiv 2310.05175): on the dense model's
         calibration activations, block b's outlier ratio D_b is the fraction of its Wanda scores
         A_ij = |W_ij|·‖X_j‖₂ (all its prunable layers together) above ``owl_m`` × their mean; the ratios are
         rescaled to a range of 2·``owl_lambda`` and centred, s_b = S − (D̃_b − mean D̃) (more outliers, less
         pruning), as the authors' code does (defaults M = 5, λ = 0.08).
search   an evolutionary search for the block sparsities, reward = −calibration loss: starting from OWL's
         allocation, a (1+4) evolution strategy perturbs the block sparsities (Gaussian steps of size σ, kept
         within ``search_max_shift`` of S, mean kept at S, σ adapted by the 1/5 success rule) and keeps a child
         only if it lowers the mean next-token NLL of the first ``search_samples`` calibration sequences. Each
         candidate is scored on a proxy: the dense model with Wanda masks from the dense activations at that
         allocation (one full-model forward per sequence: ``search_samples`` calibration forward passes per
         candidate), so the search costs the same for every method; the winner is then pruned by the real one.
         ``search_budget`` bounds the calibration forward passes of the candidates (uniform's and OWL's
         included); the dense pre-pass OWL also needs (every calibration sequence through every block once) is
         reported separately.

Global sparsity stays exact: block sparsities become integer per-layer counts (per output row for row scope)
whose total equals what uniform pruning removes at S, by largest-remainder rounding. The sparsities used
are recorded in ``info`` (and every layer's measured sparsity in the run's layer reports).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..patterns import Pattern

KINDS = ("uniform", "owl", "search")
OPTION_KEYS = ("owl_m", "owl_lambda", "search_budget", "search_samples", "search_seed", "search_max_shift")


@dataclass
class Allocation:
    kind: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    search_budget: int = 400
    search_samples: int = 8
    search_seed: int = 0
    search_max_shift: float = 0.15
    info: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown allocation {self.kind!r}; available: {', '.join(KINDS)}")
        if self.owl_m <= 0 or not 0 <= self.owl_lambda < 0.5 or self.search_budget < 0 or self.search_samples < 1 \
                or not 0 <= self.search_max_shift < 0.5:
            raise ValueError("allocation needs owl_m > 0, 0 <= owl_lambda < 0.5, search_budget >= 0, "
                             "search_samples >= 1 and 0 <= search_max_shift < 0.5")

    def options(self) -> dict:
        return {k: getattr(self, k) for k in OPTION_KEYS}

    def check(self, pattern: Pattern) -> None:
        if self.kind != "uniform" and (pattern.is_nm or pattern.scope == "global"):
            raise ValueError(f"--allocation {self.kind} sets per-layer unstructured sparsities; it does not apply "
                             f"to {'an N:M pattern' if pattern.is_nm else 'global scope'}")

    def patterns(self, adapter, pattern: Pattern, calibration, device, progress: bool = True) -> dict[str, Pattern]:
        """Per-layer patterns (full layer name -> Pattern); empty for uniform."""
        self.check(pattern)
        self.info = {"kind": self.kind, "options": self.options(), "target": pattern.target_sparsity}
        if self.kind == "uniform" or pattern.is_noop:
            return {}
        scores, ratios, sizes = _dense_wanda_pass(adapter, calibration, device, self.owl_m, keep=self.kind == "search")
        target = pattern.sparsity
        owl = _owl_sparsities(ratios, target, self.owl_lambda)
        self.info.update({"outlier_ratio": ratios, "owl_block_sparsity": owl,
                          "prepass_forward_passes": int(calibration.shape[0])})
        blocks = owl
        if self.kind == "search":
            blocks = _search(adapter, scores, calibration, target, owl, sizes, self, progress)
        layer_patterns, layer_sparsity = _exact_counts(adapter, blocks, pattern)
        self.info.update({"block_sparsity": blocks, "layer_sparsity": layer_sparsity})
        return layer_patterns


def _dense_wanda_pass(adapter, calibration, device, m: float, keep: bool):
    """Per block: OWL's outlier ratio of the Wanda scores, its weight count, and (``keep``) each layer's scores
    on the CPU."""
    from .sequential import calibrated_blocks

    kept, ratios, sizes = [], [], []
    for i, block, layers, stats in calibrated_blocks(adapter, calibration, frozenset({"sq_norm"}), device):
        metric = {name: adapter.get_weight(layer).float().abs() * stats[name].column_sq_norm().sqrt()[None, :]
                  for name, layer in layers.items()}
        flat = torch.cat([s.flatten() for s in metric.values()])
        ratios.append(float((flat > m * flat.mean()).double().mean()))
        sizes.append(flat.numel())
        if keep:
            kept.append({f"{adapter.family.blocks}.{i}.{n}": s.cpu() for n, s in metric.items()})
    return kept, ratios, sizes


def _owl_sparsities(ratios: list[float], target: float, lam: float) -> list[float]:
    lo, hi = min(ratios), max(ratios)
    if hi - lo <= 0 or lam == 0:
        return [target] * len(ratios)
    scaled = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [min(max(target - (d - mean), 0.0), 0.99) for d in scaled]


def _exact_counts(adapter, block_sparsity: list[float], pattern: Pattern):
    """Integer per-layer counts near the block targets whose total is uniform's total (see module doc)."""
    per_row = pattern.scope == "row"
    layers = []  # (name, units per step, steps available, desired steps, uniform steps)
    for i, block in enumerate(adapter.blocks):
        for name, layer in adapter.prunable_layers(block).items():
            rows, cols = adapter.get_weight(layer).shape
            unit, steps = (rows, cols) if per_row else (1, rows * cols)
            layers.append([f"{adapter.family.blocks}.{i}.{name}", unit, steps, block_sparsity[i] * steps,
                           int(steps * pattern.sparsity)])
    total = sum(unit * uniform for _, unit, _, _, uniform in layers)
    counts = [min(int(desired), steps) for _, _, steps, desired, _ in layers]
    deficit = total - sum(c * layer[1] for c, layer in zip(counts, layers))
    order = sorted(range(len(layers)), key=lambda j: (-(layers[j][3] - counts[j]), j))  # largest remainder first
    for j in order:
        if 0 < layers[j][1] <= deficit and counts[j] < layers[j][2]:
            counts[j] += 1
            deficit -= layers[j][1]
    while deficit > 0:  # what is left fits only in layers of smaller units
        fits = [j for j in order if layers[j][1] <= deficit and counts[j] < layers[j][2]]
        if not fits:
            raise ValueError(f"cannot split the pruned count exactly over these layer shapes ({deficit} left)")
        j = max(fits, key=lambda j: layers[j][1])
        counts[j] += 1
        deficit -= layers[j][1]
    while deficit < 0:  # rounding up overshot: take back from the layers with the most above their target
        j = max((j for j in order if counts[j] > 0 and layers[j][1] <= -deficit), key=lambda j: counts[j] - layers[j][3])
        counts[j] -= 1
        deficit += layers[j][1]
    patterns = {name: Pattern((c + 0.5) / steps, scope=pattern.scope)  # int(steps · s) == c exactly
                for c, (name, _, steps, _, _) in zip(counts, layers)}
    return patterns, {name: c / steps for c, (name, _, steps, _, _) in zip(counts, layers)}


def _search(adapter, scores, calibration, target, start, sizes, options: Allocation, progress: bool) -> list[float]:
    """(1+4)-ES on block sparsities under the proxy loss; returns the best allocation found."""
    from tqdm.auto import tqdm

    rng = random.Random(options.search_seed)
    ids = calibration[:options.search_samples]
    lo, hi = max(target - options.search_max_shift, 0.0), min(target + options.search_max_shift, 0.99)
    proxy = _MaskedProxy(adapter, scores)
    trace, used = [], 0
    bar = tqdm(total=options.search_budget, desc="allocation search", unit="pass", disable=not progress)

    def evaluate(blocks, label):
        nonlocal used
        loss = proxy.loss(blocks, ids)
        used += ids.shape[0]
        bar.update(ids.shape[0])
        trace.append({"passes": used, "loss": loss, "candidate": label})
        return loss

    def project(blocks):  # into [lo, hi] with the size-weighted mean at the target
        x = list(blocks)
        for _ in range(50):
            shift = target - sum(s * n for s, n in zip(x, sizes)) / sum(sizes)
            x = [min(max(s + shift, lo), hi) for s in x]
            if abs(shift) < 1e-9:
                break
        return x

    try:
        uniform_loss = evaluate([target] * len(sizes), "uniform") if used + ids.shape[0] <= options.search_budget else None
        best = project(start)
        best_loss = evaluate(best, "owl") if used + ids.shape[0] <= options.search_budget else math.inf
        sigma, accepted = max(options.owl_lambda / 4, 0.005), 0
        while used + 4 * ids.shape[0] <= options.search_budget:
            children = [project([s + rng.gauss(0, sigma) for s in best]) for _ in range(4)]
            losses = [evaluate(c, "child") for c in children]
            j = min(range(4), key=losses.__getitem__)
            if losses[j] < best_loss:
                best, best_loss, accepted = children[j], losses[j], accepted + 1
                trace[-4 + j]["accepted"] = True
                sigma *= 1.5
            else:
                sigma *= 0.8
    finally:
        proxy.restore()
        bar.close()
    options.info["search"] = {"budget_forward_passes": options.search_budget, "forward_passes": used,
                              "samples_per_candidate": int(ids.shape[0]), "proxy_loss_uniform": uniform_loss,
                              "proxy_loss_owl": trace[1]["loss"] if len(trace) > 1 else None,
                              "proxy_loss_best": best_loss, "accepted": accepted, "trace": trace}
    return best


class _MaskedProxy:
    """The dense model with per-row Wanda masks at a candidate allocation; restores the dense weights."""

    def __init__(self, adapter, scores):
        self.adapter = adapter
        self.layers = dict(adapter.named_prunable_layers())
        self.dense = {n: adapter.get_weight(layer).clone() for n, layer in self.layers.items()}
        self.rank = {}  # rank of each weight's score within its row (0 = lowest), compact
        self.block_of = {}
        for b, block in enumerate(scores):
            for name, s in block.items():
                order = torch.argsort(s, dim=1, stable=True)
                dtype = torch.int16 if s.shape[1] < 2**15 else torch.int32
                rank = torch.empty_like(order, dtype=dtype)
                rank.scatter_(1, order, torch.arange(s.shape[1]).to(dtype).expand_as(order).contiguous())
                self.rank[name] = rank
                self.block_of[name] = b

    def loss(self, blocks: list[float], ids: torch.Tensor) -> float:
        for name, layer in self.layers.items():
            k = int(self.dense[name].shape[1] * blocks[self.block_of[name]])
            self.adapter.set_weight(layer, self.dense[name].masked_fill(self.rank[name].to(torch.int32) < k, 0.0))
        total = 0.0
        with torch.no_grad():
            for row in ids:
                logits = self.adapter.model(input_ids=row[None].to(self.adapter.model.device)).logits[0, :-1].float()
                total += float(F.cross_entropy(logits, row[1:].to(logits.device)))
        return total / ids.shape[0]

    def restore(self) -> None:
        for name, layer in self.layers.items():
            self.adapter.set_weight(layer, self.dense[name])
