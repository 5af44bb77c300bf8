"""Structured pruning: remove whole units (MLP channels, attention heads) or whole decoder blocks, so the saved
tensors are physically smaller.

This is the engine's block-level step that may change shapes. It reuses the sequential traversal
(``calibrated_blocks``: statistics of each block's inputs, then the modified block runs to make the next block's
inputs), asks the adapter which rows and columns make up a unit, and hands the criteria plain tensors.

Budget: ``sparsity`` is the fraction of the decoder blocks' parameters to remove. Uniform allocation gives every
block the same units to remove: for heads the (whole kv groups, query heads per group) pair closest to the target
share of the attention parameters, then MLP channels take up the rest of the block's share. The adaptive
allocation (FLAP's) ranks all units of all blocks by their criterion score standardised per block and kind.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..algorithms.structured import (BLOCK_CRITERIA, UNIT_CRITERIA, augmented_hessian, choose_removed,
                                     cosine_dissimilarity, flap_bias, obs_select, refit_consumer, relative_error)
from ..models.adapters import ModelAdapter, UnitGroup
from .sequential import calibrated_blocks

STRUCTURES = {"channels": ("channels",), "heads": ("heads",), "channels,heads": ("heads", "channels"),
              "heads,channels": ("heads", "channels"), "blocks": ("blocks",)}
ALLOCATIONS = ("uniform", "adaptive")


@dataclass(frozen=True)
class StructuredSpec:
    """What to remove and how. ``bias``: add a compensation bias to the consumer (None: on for flap and with
    refit, wherever the model can store one); ``round_to``: keep a multiple of this many MLP channels;
    ``dampening``: ridge λ = dampening·mean(diag H) of the refit and of obs."""
    structure: str
    sparsity: float
    criterion: str
    refit: bool = False
    bias: bool | None = None
    allocation: str = "uniform"
    round_to: int = 1
    dampening: float = 1e-4
    diagnostics: bool | None = None

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"--structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}")
        if not 0 < float(self.sparsity) < 1:
            raise ValueError(f"structured --sparsity is the fraction of decoder-block parameters to remove, in (0, 1); "
                             f"got {self.sparsity}")
        if self.is_depth:
            if self.criterion not in BLOCK_CRITERIA:
                raise ValueError(f"--structure blocks takes --method {' | '.join(BLOCK_CRITERIA)}, not {self.criterion!r}")
            if self.refit or self.bias or self.allocation != "uniform":
                raise ValueError("--refit, --bias-correction and --allocation apply to channels/heads, not to blocks")
        elif self.criterion not in UNIT_CRITERIA:
            raise ValueError(f"structured --method for channels/heads is one of {', '.join(UNIT_CRITERIA)}; "
                             f"got {self.criterion!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"--allocation must be one of {', '.join(ALLOCATIONS)} for structured pruning")
        if int(self.round_to) < 1 or self.dampening < 0:
            raise ValueError("round_to must be >= 1 and dampening >= 0")

    @property
    def kinds(self) -> tuple[str, ...]:
        return STRUCTURES[self.structure]

    @property
    def is_depth(self) -> bool:
        return self.kinds == ("blocks",)

    @property
    def wants_bias(self) -> bool:
        return self.bias if self.bias is not None else (self.refit or UNIT_CRITERIA[self.criterion].mean_bias)

    def needs(self) -> frozenset[str]:
        """Statistics of the consumers' inputs to collect (empty: no calibration passes for widths)."""
        if self.is_depth:
            return frozenset()
        criterion = UNIT_CRITERIA[self.criterion]
        needs = set(criterion.needs)
        if self.refit or criterion.greedy:
            needs.add("hessian")
        if self.wants_bias:
            needs.add("mean")
        if self.diagnostics or (self.diagnostics is None and needs):
            needs.add("hessian")
        return frozenset(needs)

    @property
    def needs_calibration(self) -> bool:
        return self.is_depth or bool(self.needs())

    def to_dict(self) -> dict:
        return asdict(self)


# -- budget ----------------------------------------------------------------------------------------------------
def block_params(block) -> int:
    return sum(p.numel() for p in block.parameters())


def _attention_params(g: UnitGroup) -> int:
    return g.count * g.unit_params + g.groups * g.group_params


def _heads_removed_params(g: UnitGroup, drop_groups: int, drop_per_group: int) -> int:
    return drop_groups * (g.per_group * g.unit_params + g.group_params) + (g.groups - drop_groups) * drop_per_group * g.unit_params


def plan_heads(g: UnitGroup, target: float) -> tuple[int, int]:
    """(whole kv groups, query heads per remaining group) to drop: removed parameters closest to ``target``;
    ties keep more key/value heads. At least one group with one head is kept."""
    options = [(abs(_heads_removed_params(g, dg, dr) - target), dg, dr)
               for dg in range(g.groups) for dr in range(g.per_group)]
    _, dg, dr = min(options)
    return dg, dr


def plan_channels(g: UnitGroup, target: float, round_to: int = 1) -> int:
    """Channels to drop so about ``target`` parameters go; the kept width a multiple of ``round_to`` (≥ it)."""
    drop = min(max(round(target / g.unit_params), 0), g.count - 1)
    if round_to > 1:
        kept = max(round_to, round((g.count - drop) / round_to) * round_to)
        drop = max(g.count - kept, 0)
    return drop


def plan_uniform(adapter: ModelAdapter, spec: StructuredSpec) -> list[dict]:
    """Per block, {kind: (drop_groups, drop_per_group)}: channels are one group, so (0, channels to drop)."""
    plans = []
    for block in adapter.blocks:
        target = spec.sparsity * block_params(block)
        plan, removed = {}, 0
        if "heads" in spec.kinds:
            g = adapter.units(block, "heads")
            share = spec.sparsity * _attention_params(g) if "channels" in spec.kinds else target
            plan["heads"] = plan_heads(g, share)
            removed = _heads_removed_params(g, *plan["heads"])
        if "channels" in spec.kinds:
            plan["channels"] = (0, plan_channels(adapter.units(block, "channels"), target - removed, spec.round_to))
        plans.append(plan)
    return plans


def plan_adaptive(adapter: ModelAdapter, spec: StructuredSpec, scores: list[dict]) -> list[dict]:
    """FLAP's adaptive structure: standardise each block's scores per kind (z-scores), rank every unit of the
    model together and remove the lowest until the parameter budget is spent. Heads then snap to the nearest
    valid GQA layout in their block; every block keeps at least one unit of each kind."""
    groups = [{k: adapter.units(b, k) for k in spec.kinds} for b in adapter.blocks]
    entries = []
    for i, per_kind in enumerate(scores):
        for kind, s in per_kind.items():
            s = s.double()
            z = (s - s.mean()) / s.std().clamp_min(1e-12) if s.numel() > 1 else torch.zeros_like(s)
            entries += [(float(v), i, kind) for v in z]
    entries.sort(key=lambda e: e[0])
    budget = spec.sparsity * sum(block_params(b) for b in adapter.blocks)
    counts = [{k: 0 for k in spec.kinds} for _ in adapter.blocks]
    removed = 0.0
    for _, i, kind in entries:
        if removed >= budget:
            break
        g = groups[i][kind]
        if counts[i][kind] + 1 >= g.count:
            continue
        counts[i][kind] += 1
        removed += g.unit_params
    plans = []
    for i, per_kind in enumerate(counts):
        plan = {}
        for kind, n in per_kind.items():
            g = groups[i][kind]
            if kind == "heads":
                options = [(abs(dg * g.per_group + (g.groups - dg) * dr - n), dg, dr)
                           for dg in range(g.groups) for dr in range(g.per_group)]
                plan[kind] = min(options)[1:]
            else:
                plan[kind] = (0, plan_channels(g, n * g.unit_params, spec.round_to))
        plans.append(plan)
    return plans


# -- one block -------------------------------------------------------------------------------------------------
def _columns(units, size: int) -> torch.Tensor:
    units = torch.as_tensor(list(units), dtype=torch.long)
    return (units[:, None] * size + torch.arange(size)).flatten()


def _prune_units(adapter: ModelAdapter, index: int, block, kind: str, plan: tuple[int, int], spec: StructuredSpec,
                 stats, use_bias: bool) -> dict:
    """Choose, compensate and physically remove one kind of unit in one block; returns its record."""
    start = time.perf_counter()
    criterion = UNIT_CRITERIA[spec.criterion]
    g = adapter.units(block, kind)
    producers, consumer = adapter.unit_weights(block, kind)
    st = stats.get(g.consumer) if stats else None
    drop_groups, drop_per_group = plan
    n_cols = consumer.shape[1]
    hessian = None  # of the consumer's input; with a bias, of [x; 1] (the bias is one more, never removed, column)
    if st is not None and st.hessian is not None:
        hessian = (augmented_hessian(st.hessian, st.mean_sum, st.n_tokens) if use_bias and st.mean_sum is not None
                   else st.hessian.double())
    if criterion.greedy:
        removed = obs_select(consumer, hessian, g.unit_size, g.groups, drop_groups, drop_per_group, spec.dampening,
                             extra_cols=hessian.shape[0] - n_cols)
    else:
        removed = choose_removed(criterion.scores(producers, consumer, g.unit_size, st).cpu(), g.groups,
                                 drop_groups, drop_per_group)
    removed_set = set(removed)
    keep = [u for u in range(g.count) if u not in removed_set]
    keep_cols, removed_cols = _columns(keep, g.unit_size), _columns(removed, g.unit_size)
    weight, bias = consumer[:, keep_cols].double(), None
    if use_bias and (criterion.mean_bias or not spec.refit) and removed:
        bias = flap_bias(consumer, st.column_mean(), removed_cols)  # the criterion's own compensation

    dense = consumer.double()
    if hessian is not None and hessian.shape[0] > n_cols:
        dense = torch.cat([dense, dense.new_zeros(dense.shape[0], 1)], dim=1)

    def as_full(w_kept, b):  # Ŵ in the dense layout: zero columns where units were removed, then the bias column
        w = torch.zeros_like(dense)
        w[:, keep_cols] = w_kept
        if dense.shape[1] > n_cols and b is not None:
            w[:, n_cols] = b
        return w

    error_before = relative_error(dense, as_full(weight, bias), hessian) if hessian is not None else None
    if spec.refit:
        if dense.shape[1] > n_cols:
            fitted = refit_consumer(dense, hessian, torch.cat([keep_cols, torch.tensor([n_cols])]), spec.dampening,
                                    fit_bias_index=n_cols)
            weight, bias = fitted[:, :-1], fitted[:, -1]
        else:
            weight = refit_consumer(dense, hessian, keep_cols, spec.dampening)
    error = relative_error(dense, as_full(weight, bias), hessian) if hessian is not None else None
    adapter.remove_units(block, kind, keep)
    adapter.set_consumer(block, kind, weight.float(), None if bias is None else bias.float())
    removed_groups = [k for k in range(g.groups) if all(k * g.per_group + j in removed for j in range(g.per_group))]
    return {"block": index, "kind": kind, "units_before": g.count, "units_after": len(keep), "removed": removed,
            **({"removed_kv_groups": removed_groups} if kind == "heads" else {}),
            "bias": bias is not None, "reconstruction_error": error,
            "error_before_refit": error_before if spec.refit else None, "seconds": time.perf_counter() - start}


# -- the whole model -------------------------------------------------------------------------------------------
def _consumers(adapter: ModelAdapter, spec: StructuredSpec) -> set[str]:
    """The layers whose input statistics the criteria and refits read (the rest are not accumulated)."""
    return {adapter.unit_map(kind).consumer for kind in spec.kinds}


def _score_dense(adapter, spec, calibration, device, progress) -> list[dict]:
    """Pass 1 of the adaptive allocation: every block's unit scores on the dense model's activations."""
    criterion = UNIT_CRITERIA[spec.criterion]
    scores = []
    bar = tqdm(total=len(adapter.blocks), desc=f"{spec.criterion} scores", unit="block", disable=not progress)
    source = (calibrated_blocks(adapter, calibration, spec.needs(), device, only_layers=_consumers(adapter, spec))
              if spec.needs() else ((i, b, None, None) for i, b in enumerate(adapter.blocks)))
    for _, block, _, stats in source:
        per_kind = {}
        for kind in spec.kinds:
            g = adapter.units(block, kind)
            producers, consumer = adapter.unit_weights(block, kind)
            st = stats.get(g.consumer) if stats else None
            args = (spec.dampening,) if criterion.greedy else ()
            per_kind[kind] = criterion.scores(producers, consumer, g.unit_size, st, *args).cpu()
        scores.append(per_kind)
        bar.update()
    bar.close()
    return scores


def _prune_widths(adapter: ModelAdapter, spec: StructuredSpec, calibration, device, progress) -> dict:
    use_bias = {}
    notes = []
    for kind in spec.kinds:
        storable = adapter.can_store_bias(kind)
        if spec.bias and not storable:
            raise ValueError(f"a compensation bias on {adapter.unit_map(kind).consumer} cannot be stored for "
                             f"{adapter.model.config.model_type} (no config flag for it); pass --no-bias-correction")
        use_bias[kind] = spec.wants_bias and storable
        if spec.wants_bias and not storable:
            notes.append(f"no compensation bias for {kind}: {adapter.model.config.model_type} cannot store one on "
                         f"{adapter.unit_map(kind).consumer}")
    needs = spec.needs()
    if needs and calibration is None:
        raise ValueError(f"{spec.criterion} (with these options) needs calibration token ids")
    if spec.allocation == "adaptive":
        plans = plan_adaptive(adapter, spec, _score_dense(adapter, spec, calibration, device, progress))
    else:
        plans = plan_uniform(adapter, spec)
    reports = []
    bar = tqdm(total=len(adapter.blocks), desc=f"{spec.criterion} {spec.structure} {spec.sparsity:g}", unit="block",
               disable=not progress)
    source = (calibrated_blocks(adapter, calibration, needs, device, only_layers=_consumers(adapter, spec)) if needs
              else ((i, b, None, None) for i, b in enumerate(adapter.blocks)))
    for i, block, _, stats in source:
        for kind in spec.kinds:  # heads before channels: attention runs first in the block
            reports.append(_prune_units(adapter, i, block, kind, plans[i][kind], spec, stats, use_bias[kind]))
        bar.update()
    bar.close()
    written = adapter.write_structure(spec.kinds)
    return {"layers": reports, "config": written, "notes": notes}


def block_influence(adapter: ModelAdapter, calibration: torch.Tensor, device) -> list[float]:
    """ShortGPT's block influence of every block on the dense model: mean over calibration tokens of
    1 − cos(block input, block output). Counted in the statistics pass of each block (every row once)."""
    sums = [0.0] * len(adapter.blocks)
    counts = [0] * len(adapter.blocks)
    active = set(range(len(adapter.blocks)))

    def hook(i):
        def fn(_module, args, kwargs, output):
            if i in active:
                x = args[0] if args else kwargs["hidden_states"]
                y = output[0] if isinstance(output, (tuple, list)) else output
                s, n = cosine_dissimilarity(x, y)
                sums[i] += s
                counts[i] += n
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(adapter.blocks)]
    try:
        for i, _block, _layers, _stats in calibrated_blocks(adapter, calibration, frozenset(), device):
            active.discard(i)  # the pass that makes the next block's inputs would count every row twice
    finally:
        for h in handles:
            h.remove()
    return [s / max(n, 1) for s, n in zip(sums, counts)]


def _prune_depth(adapter: ModelAdapter, spec: StructuredSpec, calibration, device) -> dict:
    if calibration is None:
        raise ValueError("block-influence needs calibration token ids")
    n_blocks = len(adapter.blocks)
    drop = min(max(round(spec.sparsity * n_blocks), 1), n_blocks - 1)
    scores = block_influence(adapter, calibration, device)
    removed = sorted(int(i) for i in torch.argsort(torch.tensor(scores), stable=True)[:drop])
    adapter.remove_blocks(removed)
    adapter.write_structure(())
    return {"removed_blocks": removed, "block_influence": scores, "layers": [], "config": {
        "num_hidden_layers": len(adapter.blocks)}, "notes": []}


def prune_structured(model, spec: StructuredSpec, calibration: torch.Tensor | None = None,
                     device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Remove units or blocks of ``model`` in place (its config is updated to the smaller shapes); returns the
    record: per block and kind the removed units and reconstruction errors, and the achieved parameter reduction."""
    adapter = ModelAdapter(model)
    for kind in spec.kinds:
        if kind != "blocks":
            adapter.unit_map(kind)  # fails early, with the structures this family offers
    device = torch.device(device)
    before = sum(block_params(b) for b in adapter.blocks)
    total_before = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    if spec.is_depth:
        result = _prune_depth(adapter, spec, calibration, device)
    else:
        result = _prune_widths(adapter, spec, calibration, device, progress)
    after = sum(block_params(b) for b in adapter.blocks)
    result.update({
        "spec": spec.to_dict(),
        "block_params_before": before, "block_params_after": after,
        "achieved_sparsity": 1 - after / before,
        "total_params_before": total_before, "total_params_after": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start,
    })
    errors = [r["reconstruction_error"] for r in result["layers"] if r.get("reconstruction_error") is not None]
    if errors:
        result["mean_reconstruction_error"] = sum(errors) / len(errors)
    return result
