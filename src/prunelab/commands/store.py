"""``prunelab store export|import``: a results store's finished runs as JSON lines, and merging them back.

A store is one SQLite file on one machine; its lines are text that can be committed next to the results they
produced, moved between machines, or merged from several sweeps into one store for one report."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    s = sub.add_parser("store", help="export a results store's finished runs as JSON lines, or import such lines")
    actions = s.add_subparsers(dest="action", required=True)
    e = actions.add_parser("export", help="write every done/failed run and gate verdict of --store to FILE")
    e.add_argument("file")
    e.add_argument("--store", required=True)
    i = actions.add_parser("import", help="merge exported lines into --store (runs it has done are kept)")
    i.add_argument("files", nargs="+")
    i.add_argument("--store", required=True)
    s.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from ..bench.store import ResultsStore

    if args.action == "import":
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"no such file: {', '.join(missing)}")
    elif not Path(args.store).is_file():
        raise FileNotFoundError(f"{args.store}: no results store there (a sweep's --store creates one)")
    store = ResultsStore(args.store)
    try:
        if args.action == "export":
            print(json.dumps({"file": args.file, "lines": store.export_jsonl(args.file)}))
        else:
            for f in args.files:
                print(json.dumps({"file": f, **store.import_jsonl(f)}))
    finally:
        store.close()
    return 0
