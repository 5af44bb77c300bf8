"""``prunelab speed``: measured prefill/decode speed, time to first token, memory and size, against a baseline."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    from ..kernels import KERNELS

    s = sub.add_parser("speed", help="measure prefill/decode tokens/s, time to first token, peak memory and size "
                                     "against a baseline, with the ideal ratio next to each")
    s.add_argument("model", help="embedded name, HF or prunelab folder, hub id or .gguf")
    s.add_argument("--baseline", help="model to compare with under the same settings (default: the source model "
                                      "named in MODEL's prunelab.json; 'none' to measure MODEL alone)")
    s.add_argument("--batch", type=int, default=1, help="prompts per forward (default 1)")
    s.add_argument("--prompt-len", type=int, default=512, help="prompt tokens (default 512)")
    s.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated (default 128)")
    s.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default 5)")
    s.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    s.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    s.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    s.add_argument("--kernel", default="dense", choices=KERNELS, help="dense | csr: how MODEL's pruned layers are multiplied "
                                                      "(the baseline always runs dense)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random prompt token ids")
    s.add_argument("--cache", default="dynamic", choices=["dynamic", "static"],
                   help="KV cache: dynamic (grown by concatenation every step, transformers' default) or static "
                        "(preallocated for prompt + new tokens before the clock starts)")
    s.add_argument("--same-process", action="store_true",
                   help="measure both models in this process (faster; peak RSS is then not per model)")
    s.add_argument("--json", help="write the measurements to this JSON file")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from ..eval.speed import SpeedSettings, compare, default_baseline, format_table
    from ..export import write_json

    settings = SpeedSettings(batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                             repeats=args.repeats, threads=args.threads, device=args.device, dtype=args.dtype,
                             kernel=args.kernel, seed=args.seed, cache=args.cache)
    baseline = args.baseline
    if baseline is None:
        baseline = default_baseline(args.model)
        if baseline is None and not args.quiet:
            print("[prunelab] no baseline: MODEL has no prunelab.json naming its source; give --baseline")
    elif baseline.lower() == "none":
        baseline = None
    if not args.quiet:
        print(f"[prunelab] speed: {args.model}" + (f" vs {baseline}" if baseline else "")
              + (" (each in its own process)" if not args.same_process else ""), flush=True)
    result = compare(args.model, baseline, settings, isolate=not args.same_process, progress=not args.quiet)
    if args.json:
        write_json(Path(args.json), result)
    print(format_table(result))
    if args.json and not args.quiet:
        print(json.dumps({"json": args.json}))
    return 0
