"""Iterative pruning: prune a little, fine-tune, prune more, ... to the target, each step only adding zeros.

``run_steps`` is the one resumable loop behind both ``prunelab finetune`` (no pruning, one fine-tuning phase) and
``prunelab iterative`` (K pruning steps, each followed by a phase). After every pruning step and at every
checkpoint inside a phase the whole state (weights, masks, optimizer, RNG, step, records) goes to the work
folder; a rerun continues from there and ends with the same bytes as an uninterrupted run.

Per step k the pruner is any registered method run by the sequential engine at the step's cumulative target
s_k, with the masks of the earlier steps as priors (engine.prune_model(prior_masks=...)): already-pruned weights
are chosen first and stay zero, so each step adds exactly (s_k − s_{k−1})·n zeros per layer (layer scope; row scope
per row). The fine-tuning budget (tokens or optimizer steps) is the total over all phases, split evenly, or with
``final_share`` that fraction after the last step and the rest evenly over the others.
Threshold mode (seed 003): step k prunes every weight with |w| < T (one global threshold; magnitude only), capped
at the target.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..config import PruneConfig
from .trainer import FinetuneConfig, Phase, check_final_share, split_steps
from .masks import Masks
from .schedules import SCHEDULES, schedule_targets


@dataclass(frozen=True)
class IterativeConfig:
    prune: PruneConfig  # the per-step pruner; its sparsity is the final target
    schedule: str = "cubic"
    steps: int | None = None  # pruning steps K
    rate: float | None = None  # constant schedule given as the fraction of remaining weights pruned per step
    threshold: float | None = None  # prune |w| < threshold each step (magnitude), capped at the target
    final_share: float | None = None  # fraction of the fine-tuning budget after the last step (None: even split)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.prune.pattern != "unstructured":
            raise ValueError("iterative pruning works on unstructured sparsity targets (no N:M)")
        if self.rate is not None and self.threshold is not None:
            raise ValueError("give --rate or --threshold, not both")
        if self.threshold is not None:
            if self.prune.method != "magnitude":
                raise ValueError("threshold mode prunes |w| < T, i.e. by magnitude; use --method magnitude")
            if self.threshold <= 0:
                raise ValueError(f"the threshold must be > 0, got {self.threshold}")
            if self.steps is None or self.steps < 1:
                raise ValueError("threshold mode needs --steps K (how many prune/fine-tune rounds)")
        check_final_share(self.final_share)
        self.targets()  # validates target, steps and rate together

    @property
    def target(self) -> float:
        return float(self.prune.sparsity)

    def targets(self) -> list[float]:
        """Scheduled cumulative sparsity after each step (threshold mode: the cap, the target, every step)."""
        if self.threshold is not None:
            return [self.target] * self.steps
        return schedule_targets(self.schedule, self.target, self.steps, self.rate)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "prune"}
        d.update({"target": self.target, "targets": self.targets(), "mode": "threshold" if self.threshold is not None
                  else "rate" if self.rate is not None else "schedule"})
        return d


def _threshold_target(model, masks: Masks, threshold: float, cap: float) -> float:
    """Sparsity reached by also pruning every kept weight with |w| < threshold, capped at ``cap``."""
    below = sum(int(((layer.weight.data.abs() < threshold) & ~masks._param_mask(name)).sum())
                for name, layer in masks.layers.items())
    return min(cap, (masks.zeros + below) / masks.total)


def prune_step(model, config: IterativeConfig, target: float, masks: Masks, calibration, progress: bool) -> dict:
    """Prune ``model`` in place to cumulative ``target`` keeping ``masks``; returns the step's record."""
    from ..engine import prune_model
    from ..patterns import Pattern

    cfg = config.prune
    algorithm = cfg.algorithm()
    scope = "global" if config.threshold is not None else (cfg.scope or algorithm.default_scope)
    if config.threshold is not None:
        target = _threshold_target(model, masks, config.threshold, config.target)
    before = masks.sparsity
    start = time.perf_counter()
    reports = []
    if target > before or scope == "global":
        reports = prune_model(model, algorithm, Pattern.parse(target, "unstructured", scope),
                              calibration if cfg.needs_calibration else None, device=cfg.device, progress=progress,
                              post=cfg.post_steps(), prior_masks=masks.for_engine())
    added = masks.extend(model)
    errors = [r.reconstruction_error for r in reports if r.reconstruction_error is not None]
    return {"target": target, "scope": scope, "sparsity_before": before, "sparsity": masks.sparsity,
            "zeros_added": added, "zeros": masks.zeros, "prune_seconds": time.perf_counter() - start,
            "mean_reconstruction_error": sum(errors) / len(errors) if errors else None}


def run_steps(model, data, finetune: FinetuneConfig, *, iterative: IterativeConfig | None = None,
              calibration: torch.Tensor | None = None, workdir=None, resume: dict | None = None,
              evaluate=None, progress: bool = True, checkpoint_every: int | None = None,
              checkpoint_minutes: float | None = 5.0, stop_after: int | None = None, teacher=None):
    """Fine-tune ``model`` (no ``iterative``), or prune it iteratively with fine-tuning after each step; in place.

    ``teacher``: the frozen dense model that ``finetune.distill`` distils from (the same one in every phase).

    ``workdir`` (checkpoint.WorkDir) receives the state; ``resume`` is a state it returned. ``evaluate(model)``, if
    given, is called after each step's fine-tuning and its dict recorded. ``stop_after`` (tests) stops, as a kill
    would, after that many optimizer steps in total. Returns (model, record of the steps, masks)."""
    targets = iterative.targets() if iterative else [None]
    phase_steps = split_steps(finetune.total_steps, len(targets), iterative.final_share if iterative else None)
    if min(phase_steps) < 1:
        raise ValueError(f"{finetune.total_steps} optimizer steps cannot be split over {len(targets)} pruning steps "
                         f"as {phase_steps}; raise --tokens/--train-steps, lower --steps or change --final-share")
    params = dict(model.named_parameters())  # the same Parameter objects through LoRA wrapping and merging
    masks = Masks.from_model(model)
    steps_done, records, k, stage, phase_state = 0, [], 0, ("prune" if iterative else "train"), None
    if resume is not None:
        with torch.no_grad():
            for name, value in resume["model"].items():
                params[name].copy_(value)
        masks.load_state_dict(resume["masks"])
        k, stage, records, phase_state = resume["k"], resume["stage"], resume["records"], resume.get("phase")
        steps_done = sum(phase_steps[:k])
    initial = resume["initial"] if resume is not None else {"sparsity": masks.sparsity, "zeros": masks.zeros,
                                                            "prunable": masks.total}

    def save(stage_now, k_now, phase=None):
        if workdir is not None:
            workdir.save({"k": k_now, "stage": stage_now, "records": records, "phase": phase, "initial": initial,
                          "masks": masks.state_dict(), "model": {n: p.detach() for n, p in params.items()}})

    while k < len(targets):
        if stage == "prune":
            records.append({"step": k + 1, "scheduled_target": targets[k],
                            **prune_step(model, iterative, targets[k], masks, calibration, progress)})
            stage, phase_state = "train", None
            save("train", k)
        if not records or len(records) <= k:  # plain fine-tuning: one record for the one phase
            records.append({"step": k + 1, "sparsity": masks.sparsity, "zeros": masks.zeros})
        label = f"finetune {k + 1}/{len(targets)}" if iterative else "finetune"
        phase = Phase(model, masks, data, finetune, phase_steps[k], data_offset=steps_done, index=k,
                      resume=phase_state, progress=progress, label=label, teacher=teacher)
        left = None if stop_after is None else stop_after - steps_done
        try:
            phase.run(checkpoint=lambda state, k=k: save("train", k, state), checkpoint_every=checkpoint_every,
                      checkpoint_minutes=checkpoint_minutes,
                      stop_after=left if left is not None and left < phase_steps[k] else None)
        except BaseException:
            phase.abandon()  # the model object is left as it was given (no adapters attached)
            raise
        model, log = phase.finish()
        measured = Masks.from_model(model)  # counted from the weights, not from the masks
        records[k]["finetune"] = log
        records[k].update({"zeros_after_finetune": measured.zeros, "sparsity_after_finetune": measured.sparsity})
        if evaluate is not None:
            records[k]["eval"] = evaluate(model)
        steps_done += phase_steps[k]
        k += 1
        stage, phase_state = "prune" if iterative else "train", None
        if k < len(targets):
            save(stage, k)
    return model, {"initial": initial, "steps": records, "phase_steps": phase_steps}, masks
