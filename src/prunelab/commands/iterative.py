"""``prunelab iterative --method M --target S --schedule constant|linear|exponential|cubic --steps K
[--rate R | --threshold T] [--final-share F] (--tokens T | --train-steps N) --out DIR``: prune in K steps to S, fine-tuning
(with the mask kept) after each step."""
from __future__ import annotations

import json

from ..models.loading import DEFAULT_MODEL
from .finetune import add_training_flags, finetune_config, summary_of


def add_parser(sub) -> None:
    from ..algorithms import available
    from ..train import SCHEDULES

    p = sub.add_parser("iterative", help="prune in steps to a target with fine-tuning between steps (resumable)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--method", required=True, choices=available(), help="the per-step pruner")
    p.add_argument("--target", type=float, required=True, help="final sparsity of each prunable layer, in (0, 1)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cubic",
                   help="cumulative sparsity per step: constant (same fraction of the remaining weights each step), "
                        "linear (equal increments), exponential (each step prunes twice the last), cubic (Zhu & "
                        "Gupta 2017; default)")
    p.add_argument("--steps", type=int, help="pruning steps K (fine-tuning follows each)")
    p.add_argument("--rate", type=float, help="constant schedule as the fraction of remaining weights pruned per step "
                   "(K follows from it)")
    p.add_argument("--threshold", type=float, help="each step prunes every weight with |w| < T (magnitude), "
                   "capped at --target")
    p.add_argument("--final-share", type=float, metavar="F",
                   help="fraction of the fine-tuning budget spent after the last pruning step, the rest split evenly "
                        "over the earlier steps (default: the budget split evenly over all K steps)")
    p.add_argument("--scope", choices=["layer", "row", "global"], help="where sparsity is counted (method default)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option, e.g. --opt dampening=0.01")
    p.add_argument("--calib", default="c4")
    p.add_argument("--calib-split", default=None)
    p.add_argument("--calib-samples", type=int)
    p.add_argument("--calib-seqlen", type=int)
    p.add_argument("--seed", type=int, default=0, help="calibration seed (as in prune); --train-seed for training")
    p.add_argument("--device", help="compute device for pruning one block at a time")
    p.add_argument("--dtype", default="float32")
    add_training_flags(p, "--train-steps")
    p.add_argument("--eval", dest="eval_data", help="perplexity on this corpus after each step's fine-tuning")
    p.add_argument("--eval-seqlen", type=int)
    p.add_argument("--eval-windows", type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_iterative)


def _iterative(args) -> int:
    from ..cli import _calibration, _method_options
    from ..train import iterative

    if args.steps is None and args.rate is None:
        raise ValueError("give --steps K (or --rate R for a constant schedule)")
    record = iterative(args.model, method=args.method, target=args.target, out=args.out,
                       finetune=finetune_config(args), schedule=args.schedule, steps=args.steps, rate=args.rate,
                       threshold=args.threshold, scope=args.scope, method_options=_method_options(args.opt),
                       calibration=_calibration(args), device=args.device, dtype=args.dtype, force=args.force,
                       progress=not args.quiet, eval_data=args.eval_data, eval_seqlen=args.eval_seqlen,
                       eval_windows=args.eval_windows, checkpoint_every=args.checkpoint_every,
                       checkpoint_minutes=args.checkpoint_minutes, final_share=args.final_share)
    summary = summary_of(record, args.out)
    summary["schedule"] = [{"step": s["step"], "target": round(s["target"], 6), "sparsity": s["sparsity"],
                            "heldout_ppl_end": next((h["ppl"] for h in reversed(s["finetune"]["heldout"])), None)}
                           for s in record["iterative"]["steps_record"]]
    print(json.dumps(summary, indent=2))
    return 0
