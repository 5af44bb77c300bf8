"""``prunelab finetune MODEL_OR_DIR --train CORPUS (--steps N | --tokens T) --out DIR``: recovery fine-tuning
with the pruning mask kept exactly (full or LoRA). The fine-tuning flags are shared with ``prunelab iterative``."""
from __future__ import annotations

import argparse
import json

from ..models.loading import DEFAULT_MODEL


def add_training_flags(p: argparse.ArgumentParser, steps_flag: str) -> None:
    """Flags of FinetuneConfig; ``steps_flag`` is --steps here and --train-steps in `iterative` (whose --steps
    counts pruning steps)."""
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--train", default="c4", help="training corpus: c4 (the local sample; default), wikitext2, ptb, "
                   "a .txt/.jsonl file or hf:DATASET[:CONFIG]; documents are split into train and held-out")
    g.add_argument("--train-split", help="split of the training corpus (default train)")
    budget = g.add_mutually_exclusive_group(required=True)
    budget.add_argument(steps_flag, dest="train_steps", type=int, help="optimizer steps (in total, over all phases)")
    budget.add_argument("--tokens", type=int, help="training tokens in total; steps = tokens // (batch x seqlen)")
    g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW; default 1e-4)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=float, default=0.1, help="fraction of each phase's steps with linear warm-up, "
                   "then cosine decay to --min-lr-ratio x lr (defaults 0.1 and 0.1)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--batch", type=int, default=4, help="sequences per optimizer step (default 4)")
    g.add_argument("--micro-batch", type=int, help="sequences per forward/backward (gradient accumulation; "
                   "lowers activation memory; default: the whole batch)")
    g.add_argument("--seqlen", type=int, default=512, help="tokens per training sequence (default 512)")
    g.add_argument("--lora", type=int, default=0, metavar="R", help="LoRA rank (peft); 0 = full fine-tuning (default)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank)")
    g.add_argument("--lora-targets", help="comma list of prunable layer names to adapt, e.g. q_proj,v_proj "
                   "(default: every prunable layer)")
    g.add_argument("--lora-merge", choices=["remask", "masked-delta"], default="remask",
                   help="remask: merge W + s·BA then zero the pruned weights again (default); masked-delta: train "
                        "with the update masked, W + (s·BA)·keep, so the merge is exact")
    g.add_argument("--l1", type=float, default=0.0, metavar="LAMBDA",
                   help="add LAMBDA·Σ|w| over the prunable weights to the loss (full fine-tuning)")
    g.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                   help="distil from the dense teacher: loss = (1-ALPHA)·CE + ALPHA·KL(teacher || student) "
                        "(default 0: plain causal-LM loss); the teacher costs one forward per batch and its memory")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: none; default 1)")
    g.add_argument("--train-seed", type=int, default=None, help="seed of the batch order and LoRA init (default 0)")
    g.add_argument("--heldout-fraction", type=float, default=0.05, help="documents held out for validation (0.05)")
    g.add_argument("--heldout-windows", type=int, default=16, help="held-out windows scored per validation (16)")
    g.add_argument("--eval-every", type=int, default=0, help="held-out loss every N steps (default: start and end)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward "
                   "pass (less memory, about a third more compute)")
    g.add_argument("--debug-masks", action="store_true", help="after every optimizer step, check that no pruned "
                   "weight and no optimizer state of one moved from zero")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint every N minutes (default 5); "
                   "rerun the same command to resume a killed run")
    c.add_argument("--checkpoint-every", type=int, help="also checkpoint every N optimizer steps")


def finetune_config(args, seed_default: int = 0):
    from ..train import FinetuneConfig

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None
    seed = args.train_seed if args.train_seed is not None else seed_default
    return FinetuneConfig(train=args.train, split=args.train_split, steps=args.train_steps, tokens=args.tokens,
                          lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
                          min_lr_ratio=args.min_lr_ratio, batch=args.batch, micro_batch=args.micro_batch,
                          seqlen=args.seqlen, lora=args.lora, lora_alpha=args.lora_alpha, lora_targets=targets,
                          lora_merge=args.lora_merge, l1=args.l1, distill=args.distill, grad_clip=args.grad_clip,
                          seed=seed,
                          heldout_fraction=args.heldout_fraction, heldout_windows=args.heldout_windows,
                          eval_every=args.eval_every, gradient_checkpointing=args.gradient_checkpointing,
                          debug_masks=args.debug_masks)


def summary_of(record: dict, out) -> dict:
    ft = record["finetune"]
    heldout = [h for h in ft.get("heldout") or [] if h["when"] in ("start", "end", "merged")]
    summary = {"out": str(out), "sparsity": record["summary"]["sparsity"], "tokens": ft["tokens"],
               "optimizer_steps": ft["optimizer_steps"], "train_seconds": round(ft["train_seconds"], 1),
               "train_cpu_minutes": round(ft["train_cpu_seconds"] / 60, 2),
               "peak_rss_mb": round(record["peak_rss_bytes"] / 2**20)}
    if heldout:
        summary["heldout_loss"] = {h["when"]: round(h["loss"], 4) for h in heldout}
    for name, ev in (record.get("eval") or {}).items():
        summary[f"{name}_ppl"] = ev["ppl"]
    return summary


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="recovery fine-tuning (full or LoRA) keeping every pruned weight at zero")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="a pruned folder, or any model prunelab loads")
    add_training_flags(p, "--steps")
    p.add_argument("--teacher", help="dense model to distil from with --distill (default: the model the pruned "
                   "folder was pruned from, read from its record)")
    p.add_argument("--seed", type=int, default=0, help="training seed (batch order, LoRA init); same as --train-seed")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--eval", dest="eval_data", help="also report perplexity on this corpus at the end (e.g. wikitext2)")
    p.add_argument("--eval-seqlen", type=int)
    p.add_argument("--eval-windows", type=int)
    p.add_argument("--out", required=True, help="output folder; written only when the run is complete")
    p.add_argument("--force", action="store_true", help="overwrite --out, and discard a checkpoint of another run")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_finetune)


def _finetune(args) -> int:
    from ..train import finetune

    config = finetune_config(args, seed_default=args.seed)
    record = finetune(args.model, out=args.out, config=config, teacher=args.teacher, force=args.force,
                      progress=not args.quiet,
                      dtype=args.dtype, eval_data=args.eval_data, eval_seqlen=args.eval_seqlen,
                      eval_windows=args.eval_windows, checkpoint_every=args.checkpoint_every,
                      checkpoint_minutes=args.checkpoint_minutes)
    print(json.dumps(summary_of(record, args.out), indent=2))
    return 0
