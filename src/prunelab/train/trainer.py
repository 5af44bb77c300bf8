"""Recovery fine-tuning on the causal-LM objective with the pruning mask held exactly.

Full fine-tuning trains every parameter with AdamW; masked gradients and masked moment estimates keep each
pruned weight at exactly 0 (masks.py says why that is exact). LoRA goes through ``peft`` on the prunable layers;
the base weights stay frozen and the adapters are merged at the end so that the mask is kept, in one of two ways:

- ``remask`` (default): ordinary LoRA training; merge W + s·BA, then zero the masked weights again. The merged
  model differs from the trained one wherever BA was non-zero on a pruned weight: that difference is measured
  (held-out loss before and after the merge, recorded as ``merge_cost``).
- ``masked-delta``: the adapter's update is masked inside the forward pass, W + (s·BA) ⊙ keep, so training sees
  exactly the model that the merge produces (merge cost 0 up to float rounding). It costs a full weight-gradient
  matmul per layer, about what full fine-tuning spends on compute, without AdamW's memory for the base weights.

Distillation (``distill`` = α > 0): the loss is (1 − α)·CE + α·KL(teacher ‖ student) per token at
temperature 1, the teacher being the dense model (frozen). A pruned model has lost a little of everything the
dense one knew, so the teacher's whole next-token distribution is a richer target per token than the one
observed token: recovery per training token is what the budget buys. It costs one teacher forward per
micro-batch (about a third of a training step) and the teacher's weights in memory.

A phase is resumable: its state (trainable tensors, optimizer, RNG, step, logs) is handed to a checkpoint
callback, and ``Phase(..., resume=state)`` continues bit-identically (batches are a pure function of the step,
see data.py; the learning rate is a pure function of the step).
"""
from __future__ import annotations

import dataclasses
import math
import time
import types
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models import ModelAdapter
from .checkpoint import rng_state, set_rng_state
from .data import TrainingData, heldout_loss
from .masks import Masks

LORA_MERGES = ("remask", "masked-delta")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the result of a fine-tuning run (checkpoint cadence does not)."""
    train: str = "c4"  # any corpus load_corpus reads: c4, wikitext2, ptb, a .txt/.jsonl file, hf:DATASET
    split: str | None = None  # default: train for c4, else validation (the local copies' splits)
    steps: int | None = None  # optimizer steps; or give tokens
    tokens: int | None = None  # training tokens; steps = tokens // (batch · seqlen)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of a phase's steps with linear warm-up, then cosine decay to min_lr_ratio·lr
    min_lr_ratio: float = 0.1
    batch: int = 4  # sequences per optimizer step
    micro_batch: int | None = None  # sequences per forward/backward (gradient accumulation); None: batch
    seqlen: int = 512
    lora: int = 0  # LoRA rank; 0 = full fine-tuning
    lora_alpha: float | None = None  # None: 2 · rank
    lora_targets: tuple[str, ...] | None = None  # leaf names of prunable layers (q_proj, ...); None: all of them
    lora_merge: str = "remask"
    l1: float = 0.0  # λ of the penalty λ·Σ|w| over the prunable weights (full fine-tuning only)
    distill: float = 0.0  # α: loss = (1 − α)·CE + α·KL(teacher ‖ student); 0 = plain causal-LM loss
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0
    heldout_fraction: float = 0.05  # documents held out of training (the split is recorded)
    heldout_windows: int = 16  # held-out windows of seqlen scored for the validation loss
    eval_every: int = 0  # held-out loss every N steps (0: at the start and end of each phase only)
    gradient_checkpointing: bool = False
    debug_masks: bool = False  # check after every optimizer step that no pruned weight or its state moved

    def __post_init__(self):
        if isinstance(self.lora_targets, str):  # "q_proj,v_proj" from a flag or a sweep setting
            object.__setattr__(self, "lora_targets", tuple(t.strip() for t in self.lora_targets.split(",") if t.strip()))
        if isinstance(self.lora_targets, list):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give the fine-tuning budget as steps (--steps N) or tokens (--tokens T), one of them")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.tokens is not None and self.tokens < self.batch * self.seqlen:
            raise ValueError(f"{self.tokens} tokens is less than one batch ({self.batch} x {self.seqlen}); "
                             "raise --tokens or lower --batch/--seqlen")
        for name in ("batch", "seqlen", "heldout_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch is not None and not (1 <= self.micro_batch <= self.batch):
            raise ValueError(f"micro_batch must be in [1, batch={self.batch}], got {self.micro_batch}")
        if self.lr <= 0 or self.weight_decay < 0 or self.l1 < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; weight_decay, l1 and grad_clip >= 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("warmup must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.lora < 0:
            raise ValueError(f"LoRA rank must be >= 0 (0 = full fine-tuning), got {self.lora}")
        if self.lora_merge not in LORA_MERGES:
            raise ValueError(f"lora_merge must be one of {LORA_MERGES}, got {self.lora_merge!r}")
        if self.lora and self.l1:
            raise ValueError("--l1 penalises the pruned model's own weights, which LoRA keeps frozen; "
                             "use it with full fine-tuning (no --lora)")
        if self.eval_every < 0:
            raise ValueError("eval_every must be >= 0")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"distill is the weight of the distillation term, in [0, 1]; got {self.distill}")
        if self.lora:
            try:
                import peft  # noqa: F401
            except ImportError:
                raise ImportError("LoRA fine-tuning needs peft: pip install 'prunelab[finetune]'") from None

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.tokens // (self.batch * self.seqlen)

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["distill"]:
            del d["distill"]  # the default: identities and records of runs without distillation stay as they were
        d["lora_targets"] = list(self.lora_targets) if self.lora_targets else None
        d["total_steps"] = self.total_steps
        d["tokens_per_step"] = self.batch * self.seqlen
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


def learning_rate(config: FinetuneConfig, step: int, steps: int) -> float:
    """Linear warm-up over the first ``warmup`` fraction of the phase, then cosine decay to min_lr_ratio·lr."""
    warm = math.ceil(config.warmup * steps) if config.warmup > 0 else 0
    if step < warm:
        return config.lr * (step + 1) / warm
    span = max(steps - warm, 1)
    progress = min((step - warm) / span, 1.0)
    low = config.lr * config.min_lr_ratio
    return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


def check_final_share(final_share: float | None) -> float | None:
    """``final_share`` as a float, after checking it is a fraction in (0, 1) (None: an even split)."""
    if final_share is None:
        return None
    if not 0 < float(final_share) < 1:
        raise ValueError(f"--final-share is the fraction of the fine-tuning budget spent after the last pruning "
                         f"step, in (0, 1); got {final_share}")
    return float(final_share)


def split_steps(total: int, phases: int, final_share: float | None = None) -> list[int]:
    """``total`` optimizer steps spread over ``phases`` as evenly as possible, the remainder to the last ones.

    ``final_share`` F gives the last phase round(F·total) steps and spreads the rest evenly over the others: an
    iterative run then trains mostly at its final sparsity (Zhu & Gupta keep training after the pruning window)."""
    if final_share is not None and phases > 1:
        last = round(final_share * total)
        return split_steps(total - last, phases - 1) + [last]
    base, extra = divmod(total, phases)
    return [base + (1 if i >= phases - extra else 0) for i in range(phases)]


# -- LoRA -------------------------------------------------------------------------------------------------------
def lora_target_names(model, targets: tuple[str, ...] | None) -> list[str]:
    """Full module names of the prunable layers whose leaf name is in ``targets`` (all prunable layers if None)."""
    names = [name for name, _ in ModelAdapter(model).named_prunable_layers()]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    if targets:
        unknown = set(targets) - set(leaves)
        if unknown:
            raise ValueError(f"--lora-targets {sorted(unknown)} are not prunable layers of this model; "
                             f"choose from {', '.join(leaves)}")
        names = [n for n in names if n.rsplit(".", 1)[-1] in targets]
    return names


def _masked_delta_forward(self, x, *args, **kwargs):
    """Forward of a peft LoRA layer as W + (s·BA) ⊙ keep in one matmul. (peft's variant hook would first run the
    base matmul and then add a second one for the delta; replacing the forward keeps it to one.)"""
    adapter = self.active_adapters[0]
    delta = self.get_delta_weight(adapter).masked_fill(self.prunelab_mask, 0.0)
    return torch.func.functional_call(self.base_layer, {"weight": self.base_layer.weight + delta}, (x,))


def wrap_lora(model, masks: Masks, config: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    names = lora_target_names(model, config.lora_targets)
    transposed = any(ModelAdapter.stores_transposed(masks.layers[n]) for n in names)
    lora_config = LoraConfig(r=config.lora, lora_alpha=config.alpha, target_modules=names, lora_dropout=0.0,
                             bias="none", fan_in_fan_out=transposed)
    peft_model = get_peft_model(model, lora_config)
    if config.lora_merge == "masked-delta":
        modules = dict(peft_model.base_model.model.named_modules())
        for name in names:
            module = modules[name]
            module.prunelab_mask = ModelAdapter.oriented(masks.layers[name], masks.masks[name])
            module.forward = types.MethodType(_masked_delta_forward, module)
    return peft_model


def merge_lora(peft_model, masks: Masks) -> tuple[object, float]:
    """Merge the adapters into the base weights, then zero the pruned weights again; returns the plain model and
    the sparsity a plain merge would have left (how much of the mask it filled in)."""
    model = peft_model.merge_and_unload()
    plain_merge_zeros = sum(int((ModelAdapter.oriented(layer, layer.weight.data)[masks.masks[name]] == 0).sum())
                            for name, layer in masks.layers.items())
    masks.apply()
    return model, plain_merge_zeros / masks.total if masks.total else 0.0


# -- one phase of training ----------------------------------------------------------------------------------------
class Phase:
    """``steps`` optimizer steps on ``model`` in place, reading batches from ``data_offset`` on; resumable.

    ``index`` numbers the phases of an iterative run (it seeds LoRA's initialisation and dropout); ``teacher`` is
    the frozen dense model that ``config.distill`` distils from."""

    def __init__(self, model, masks: Masks, data: TrainingData, config: FinetuneConfig, steps: int,
                 data_offset: int = 0, index: int = 0, resume: dict | None = None, progress: bool = True,
                 label: str = "finetune", teacher=None):
        if config.distill and teacher is None:
            raise ValueError("distillation (distill > 0) needs the dense teacher model")
        self.base_model, self.masks, self.data, self.config = model, masks, data, config
        self.teacher = teacher.eval().requires_grad_(False) if config.distill else None
        self.steps, self.data_offset, self.index, self.progress, self.label = steps, data_offset, index, progress, label
        torch.manual_seed(config.seed * 1_000_003 + index)
        self.requires_grad = {p: p.requires_grad for p in model.parameters()}  # peft freezes them; put back after
        if not config.lora:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = wrap_lora(model, masks, config) if config.lora else model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not config.lora:  # full fine-tuning: the pruned layers' weights are the ones masked
            self.l1_weights = [layer.weight for layer in masks.layers.values()]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(0.9, 0.999), eps=1e-8, foreach=True)
        self.step = 0
        self.log = {"losses": [], "heldout": [], "seconds": 0.0, "cpu_seconds": 0.0, "resumed_at": []}
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if resume is not None:
            with torch.no_grad():
                for name, p in zip(self.names, self.params):
                    p.copy_(resume["trainable"][name])
            self.optimizer.load_state_dict(resume["optimizer"])
            set_rng_state(resume["rng"])
            self.step = resume["step"]
            self.log = resume["log"]
            self.log["resumed_at"].append(self.step)

    def state(self) -> dict:
        return {"step": self.step, "trainable": {n: p.detach().clone() for n, p in zip(self.names, self.params)},
                "optimizer": self.optimizer.state_dict(), "rng": rng_state(), "log": self.log}

    def _heldout(self, when: str) -> dict:
        loss = heldout_loss(self.model, self.data.heldout)
        entry = {"step": self.step, "when": when, "loss": loss, "ppl": math.exp(min(loss, 700))}
        self.log["heldout"].append(entry)
        return entry

    def run(self, checkpoint=None, checkpoint_every: int | None = None, checkpoint_minutes: float | None = 5.0,
            stop_after: int | None = None) -> dict:
        """Train to the end of the phase; ``checkpoint(state)`` is called every ``checkpoint_every`` steps or
        ``checkpoint_minutes`` of wall time. ``stop_after`` (tests): raise after that many steps, as a kill would."""
        cfg = self.config
        if self.step == 0 and not any(h["when"] == "start" for h in self.log["heldout"]):
            self._heldout("start")
        self.model.train()
        micro = cfg.micro_batch or cfg.batch
        tokens_per_step = cfg.batch * cfg.seqlen
        bar = tqdm(total=self.steps, initial=self.step, desc=self.label, unit="step", disable=not self.progress)
        last_save = time.monotonic()
        while self.step < self.steps:
            wall, cpu = time.perf_counter(), time.process_time()
            lr = learning_rate(cfg, self.step, self.steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = self.data.batch(self.data_offset + self.step, cfg.batch)
            self.optimizer.zero_grad(set_to_none=True)
            entry = {"step": self.step, "loss": 0.0, "lr": lr}
            for chunk in batch.split(micro):
                share = chunk.shape[0] / batch.shape[0]
                loss, parts = self._loss(chunk)
                (loss * share).backward()
                for key, value in parts.items():
                    entry[key] = entry.get(key, 0.0) + value * share
            loss_value = entry["loss"]
            if cfg.l1:
                penalty = cfg.l1 * sum(w.abs().sum() for w in self.l1_weights)
                penalty.backward()
                entry["l1"] = float(penalty.detach())
            self.masks.mask_gradients()
            if cfg.grad_clip:
                entry["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
            self.optimizer.step()
            self.masks.mask_optimizer_state(self.optimizer)
            if cfg.debug_masks:
                self.masks.check(self.optimizer, where=f"after optimizer step {self.step}")
            self.step += 1
            self.log["losses"].append(entry)
            step_seconds = time.perf_counter() - wall
            self.log["seconds"] += step_seconds
            self.log["cpu_seconds"] += time.process_time() - cpu
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_step / step_seconds:.0f}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.steps:
                self._heldout("during")
                self.model.train()
            due = (checkpoint_every and self.step % checkpoint_every == 0) or \
                  (checkpoint_minutes is not None and time.monotonic() - last_save >= 60 * checkpoint_minutes)
            if checkpoint is not None and due and self.step < self.steps:
                checkpoint(self.state())
                last_save = time.monotonic()
            if stop_after is not None and self.step >= stop_after:
                bar.close()
                raise KeyboardInterrupt(f"stopped after step {self.step} (simulated kill)")
        bar.close()
        self.model.eval()
        return self.log

    def _loss(self, chunk: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training loss of one micro-batch and its parts as floats (``loss``; with distillation ``ce``, ``kl``)."""
        alpha = self.config.distill
        if not alpha:
            loss = self.model(input_ids=chunk, labels=chunk, use_cache=False).loss
            return loss, {"loss": float(loss.detach())}
        import torch.nn.functional as F

        log_p = self.model(input_ids=chunk, use_cache=False).logits[:, :-1].float().log_softmax(-1).flatten(0, 1)
        with torch.no_grad():
            log_q = self.teacher(input_ids=chunk, use_cache=False).logits[:, :-1].float().log_softmax(-1).flatten(0, 1)
        ce = F.nll_loss(log_p, chunk[:, 1:].flatten())
        kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")  # mean over tokens of KL(q ‖ p)
        loss = (1 - alpha) * ce + alpha * kl
        return loss, {"loss": float(loss.detach()), "ce": float(ce.detach()), "kl": float(kl.detach())}

    def abandon(self) -> None:
        """Detach LoRA adapters without merging (after a failure), so the base model is plain again."""
        if self.config.gradient_checkpointing:
            self.base_model.gradient_checkpointing_disable()
        if self.config.lora and self.model is not self.base_model:
            self.model.unload()
        self._restore_requires_grad()

    def _restore_requires_grad(self) -> None:
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)

    def finish(self) -> tuple[object, dict]:
        """End of phase: held-out loss, LoRA merged with the mask kept, final mask check. Returns (model, log)."""
        cfg = self.config
        end = self._heldout("end")
        model = self.model
        if cfg.gradient_checkpointing:
            self.base_model.gradient_checkpointing_disable()
        if cfg.lora:
            model, plain = merge_lora(self.model, self.masks)
            after = heldout_loss(model, self.data.heldout)
            self.log["lora_merge"] = {"mode": cfg.lora_merge, "heldout_loss_unmerged": end["loss"],
                                      "heldout_loss_merged": after, "merge_cost": after - end["loss"],
                                      "plain_merge_sparsity": plain}
            self.log["heldout"].append({"step": self.step, "when": "merged", "loss": after,
                                        "ppl": math.exp(min(after, 700))})
        self._restore_requires_grad()
        bad = self.masks.violations()
        if bad["weights"]:
            raise RuntimeError(f"{bad['weights']} pruned weights are not zero after fine-tuning")
        tokens = self.steps * cfg.batch * cfg.seqlen
        self.log.update({"steps": self.steps, "tokens": tokens,
                         "tokens_per_second": tokens / self.log["seconds"] if self.log["seconds"] else None,
                         "trainable_params": sum(p.numel() for p in self.params),
                         "adamw_state_bytes": sum(2 * p.numel() * p.element_size() for p in self.params)})
        return model, self.log
