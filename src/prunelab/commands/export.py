"""``prunelab export``: rewrite a model folder in another checkpoint format (dense gives a plain HF folder)."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    from ..formats import SAVE_FORMATS

    e = sub.add_parser("export", help="rewrite a (pruned) model as dense (plain HF folder), bitmask or nm")
    e.add_argument("model", help="prunelab folder in any format, HF folder, embedded name, hub id or .gguf")
    e.add_argument("--format", required=True, choices=SAVE_FORMATS,
                   help="dense: plain HF folder; bitmask: kept values + 1 bit per weight; nm: N:M packed")
    e.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    e.add_argument("--pattern", help="N:M for --format nm (default: the pattern in MODEL's prunelab.json)")
    e.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    e.add_argument("--force", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(handler=run)


def run(args) -> int:
    from ..api import export_model
    from ..eval.speed import weight_files_bytes

    out = export_model(args.model, args.out, save_format=args.format, pattern=args.pattern, force=args.force,
                       dtype=args.dtype, progress=not args.quiet)
    print(json.dumps({"out": str(out), "format": args.format, "weight_bytes": weight_files_bytes(out)}, indent=2))
    return 0
