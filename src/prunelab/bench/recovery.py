"""Sweep runs with recovery fine-tuning: one-shot pruning then fine-tuning, or iterative pruning.

A sweep method may carry recovery steps after its pruning steps:

- ``+ft`` one-shot pruning, then full fine-tuning;   ``+lora`` the same with LoRA;
- ``+iter`` or ``+iter-SCHEDULE`` (constant, linear, exponential, cubic; default cubic): iterative pruning to the
  run's level in ``iter_steps`` steps with fine-tuning after each (full, or LoRA with ``+lora``).

e.g. ``magnitude+iter-linear``, ``sparsegpt+lora``, ``wanda+iter+lora``. The fine-tuning settings are the sweep's
``finetune:`` mapping (YAML/TOML) or ``--finetune KEY=VALUE`` flags: any FinetuneConfig field (``tokens`` or ``steps``
is required; ``lora`` is the rank used by ``+lora``, default 16) plus ``iter_steps`` (default 5) and
``iter_final_share`` (the share of the budget after the last pruning step; default an even split). They are part of
each run's identity. A run killed during fine-tuning resumes from its checkpoint (``STORE.work/KEY/``) when the
sweep is rerun, as ``prunelab finetune`` does.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from ..train.schedules import SCHEDULES

DEFAULT_SCHEDULE = "cubic"
DEFAULT_ITER_STEPS = 5
DEFAULT_LORA_RANK = 16
ITER_SETTINGS = {"iter_steps", "iter_final_share"}  # sweep finetune settings beyond FinetuneConfig's fields


@dataclass(frozen=True)
class Recovery:
    finetune: str  # "full" | "lora"
    schedule: str | None = None  # iterative schedule; None: one-shot pruning, then fine-tuning

    def describe(self) -> str:
        how = "LoRA" if self.finetune == "lora" else "full fine-tuning"
        return f"iterative ({self.schedule}) with {how}" if self.schedule else f"one-shot, then {how}"


def split_recovery(spec: str) -> tuple[str, Recovery | None]:
    """'magnitude+iter-linear+lora' -> ('magnitude', Recovery('lora', 'linear')); other steps stay with the method."""
    name, *steps = spec.split("+")
    kept, finetune, schedule = [name], None, None
    for step in steps:
        if step in ("ft", "lora"):
            if finetune is not None:
                raise ValueError(f"{spec!r}: give one of +ft and +lora")
            finetune = "full" if step == "ft" else "lora"
        elif step == "iter" or step.startswith("iter-"):
            schedule = step[5:] or DEFAULT_SCHEDULE
            if schedule not in SCHEDULES:
                raise ValueError(f"{spec!r}: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        else:
            kept.append(step)
    if schedule and finetune is None:
        finetune = "full"
    return "+".join(kept), (Recovery(finetune, schedule) if finetune else None)


def finetune_config(settings: dict, recovery: Recovery):
    from ..train import FinetuneConfig

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = set(settings) - fields - ITER_SETTINGS
    if unknown:
        raise ValueError(f"unknown finetune setting(s) {sorted(unknown)}; known: {sorted(fields | ITER_SETTINGS)}")
    values = {k: v for k, v in settings.items() if k in fields}
    if values.get("tokens") is None and values.get("steps") is None:
        raise ValueError("runs with +ft, +lora or +iter need a fine-tuning budget: finetune: {tokens: T} in the "
                         "sweep file, or --finetune tokens=T")
    rank = values.pop("lora", None)
    values["lora"] = (int(rank) if rank else DEFAULT_LORA_RANK) if recovery.finetune == "lora" else 0
    return FinetuneConfig(**values)


def iter_steps(settings: dict) -> int:
    return int(settings.get("iter_steps", DEFAULT_ITER_STEPS))


def iter_final_share(settings: dict) -> float | None:
    from ..train.trainer import check_final_share

    return check_final_share(settings.get("iter_final_share"))


def training_data_for(ft, tokenizer, cache: dict):
    """The fine-tuning data of ``ft``, prepared once per setting (``cache`` lives as long as the sweep's model)."""
    from ..train.data import training_data

    key = (ft.train, ft.split, ft.seqlen, ft.heldout_fraction, ft.heldout_windows, ft.seed)
    if key not in cache:
        cache[key] = training_data(tokenizer, ft.train, ft.split, ft.seqlen, ft.heldout_fraction,
                                   ft.heldout_windows, seed=ft.seed)
    return cache[key]


def identity(settings: dict, recovery: Recovery, tokenizer=None, cache: dict | None = None) -> dict:
    """What decides a recovery run's result beyond its pruning; with ``tokenizer``, the training tokens' checksums."""
    ft = finetune_config(settings, recovery)
    ident = {"recovery": dataclasses.asdict(recovery), "finetune": ft.to_dict()}
    if recovery.schedule:
        ident["iter_steps"] = iter_steps(settings)
        if (share := iter_final_share(settings)) is not None:  # absent when unset: earlier runs keep their identity
            ident["iter_final_share"] = share
    if tokenizer is not None:
        ident["data"] = training_data_for(ft, tokenizer, cache if cache is not None else {}).identity
    return ident


def run(model, tokenizer, prune_config, recovery: Recovery, settings: dict, calibration, *, cache: dict,
        work: Path | None, run_identity: dict, progress: bool):
    """Prune (one-shot or iteratively) and fine-tune ``model`` in place. Returns (LayerReports, record part).
    Full fine-tuning also trains parameters outside the decoder blocks (embeddings, head): a sweep holding such
    runs snapshots every parameter, not only the blocks' (sweep._parameter_snapshot)."""
    from ..engine import LayerReport, prune_model
    from ..models import ModelAdapter
    from ..train.checkpoint import WorkDir
    from ..train.loop import IterativeConfig, run_steps

    ft = finetune_config(settings, recovery)
    data = training_data_for(ft, tokenizer, cache)
    workdir = WorkDir(work, run_identity) if work is not None else None
    resume = workdir.load(force=True) if workdir is not None else None
    started = time.perf_counter()
    teacher = copy.deepcopy(model) if ft.distill else None  # the dense model: every run starts from it
    iterative = None
    if recovery.schedule:
        iterative = IterativeConfig(prune_config, recovery.schedule, iter_steps(settings),
                                    final_share=iter_final_share(settings))
    elif resume is None:  # a resumed one-shot run gets its pruned (and partly trained) weights from the checkpoint
        prune_model(model, prune_config.algorithm(), prune_config.pattern_obj(), calibration,
                    device=prune_config.device, progress=progress, post=prune_config.post_steps())
    model, steps_record, _ = run_steps(model, data, ft, iterative=iterative, calibration=calibration,
                                       workdir=workdir, resume=resume, progress=progress, teacher=teacher)
    seconds = time.perf_counter() - started
    layers = [LayerReport(name, tuple(ModelAdapter.get_weight(layer).shape),
                          float((ModelAdapter.get_weight(layer) == 0).float().mean()), 0.0)
              for name, layer in ModelAdapter(model).named_prunable_layers()]
    if workdir is not None:
        workdir.remove()
    logs = [s["finetune"] for s in steps_record["steps"]]
    part = {"recovery": {**dataclasses.asdict(recovery), "describe": recovery.describe(),
                         "finetune": ft.to_dict(), "data": {**data.identity, "provenance": data.provenance},
                         "steps": [{k: v for k, v in s.items() if k != "finetune"}
                                   | {"heldout": s["finetune"]["heldout"], "tokens": s["finetune"]["tokens"]}
                                   for s in steps_record["steps"]],
                         "tokens": sum(log["tokens"] for log in logs),
                         "train_seconds": sum(log["seconds"] for log in logs),
                         "train_cpu_seconds": sum(log["cpu_seconds"] for log in logs),
                         "seconds": seconds}}
    return layers, part
