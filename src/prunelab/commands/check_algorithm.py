"""``prunelab check-algorithm PATH``: the "runs in one pass" gate for a pruning plug-in, and ``--bench`` to put
a passing one on the leaderboard (the embedded model at 50/60/70% and 2:4, through a resumable sweep)."""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

BENCH_LEVELS = "0.5,0.6,0.7"
BENCH_PROTOCOL = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seeds", "0",
                  "--eval", "wikitext2", "--eval-seqlen", "512", "--eval-windows", "128", "--eval-batch-size", "8"]
# (the protocol of benchmarks/zoo.py to the flag: the evaluation batch is part of a run's identity, so a bench into the
# zoo's store reuses its dense run instead of evaluating the dense model again)


def add_parser(sub) -> None:
    c = sub.add_parser("check-algorithm", help="does a pruning plug-in run correctly on every family? (isolated)",
                       description="Run a PruningAlgorithm plug-in in a separate process on tiny random models of "
                                   "every supported family (unstructured 50%% and 2:4) and check it; exit 0 only "
                                   "if every check passes.")
    c.add_argument("path", help="a .py file defining one PruningAlgorithm subclass, FILE.py:Class, or module:Class")
    c.add_argument("--json", help="write the full result (every check and case) to this file")
    c.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per case (default 120)")
    c.add_argument("--families", help="only these families' tiny models (comma list; default: every supported "
                   "family; a pass on a subset is reported as such)")
    c.add_argument("--store", help="leaderboard store (SQLite) to record the verdict in (and --bench results); "
                   "default with --bench: runs/leaderboard.db")
    c.add_argument("--author", choices=["human", "generated"], default="human",
                   help="who wrote the algorithm: people, or a code-generating model (leaderboard column)")
    c.add_argument("--bench", action="store_true", help="if it passes, prune the embedded model at 50/60/70%% and "
                   "2:4 (calibration 64x512 C4 seed 0, WikiText-2 seqlen 512, 128 windows) into the store")
    c.add_argument("--tasks", help="with --bench: zero-shot tasks too (comma list or 'all')")
    c.add_argument("--limit", type=int, help="with --bench --tasks: first N items of each task")
    c.set_defaults(handler=run)


def run(args) -> int:
    from ..gate import check_algorithm, format_table

    from ..gate.runner import LEVELS, default_cases

    cases = default_cases()
    if args.families:
        families = args.families.split(",")
        cases = [c for c in cases if c.split("/")[0] in families]
        unknown = set(families) - {c.split("/")[0] for c in cases}
        if unknown:
            raise ValueError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {sorted(unknown)}; "
                             f"known: {sorted({c.split('/')[0] for c in default_cases()})}")
        assert all(any(c.endswith(level) for c in cases) for level in LEVELS)
    result = check_algorithm(args.path, timeout=args.timeout, cases=cases)
    print(format_table(result))
    if args.json:
        from ..export import write_json
        write_json(Path(args.json), result)
    store_path = args.store or ("runs/leaderboard.db" if args.bench else None)
    name = (result.get("plugin") or {}).get("name") or Path(args.path.split(":")[0]).stem
    if store_path:
        from ..bench.store import ResultsStore

        failed = next(((n, c) for n, c in result["checks"].items() if c["verdict"] != "pass"), None)
        store = ResultsStore(store_path)
        try:
            store.note_algorithm(name, author=args.author, source=args.path, sha256=result.get("sha256"),
                                 gate="passed" if result["passed"] else "failed",
                                 reason=f"{failed[0]}: {failed[1]['reason']}" if failed else None, result=result)
        finally:
            store.close()
    if not result["passed"]:
        return 1
    if args.bench:
        command = [sys.executable, "-m", "prunelab.cli", "sweep", "--plugin", args.path, "--methods", name,
                   "--levels", BENCH_LEVELS, "--patterns", "unstructured,2:4", *BENCH_PROTOCOL, "--store", store_path,
                   *(["--tasks", args.tasks] if args.tasks else []), *(["--limit", str(args.limit)] if args.limit else [])]
        print("[prunelab] bench: " + " ".join(shlex.quote(a) for a in command[2:]), flush=True)
        return subprocess.run(command).returncode
    return 0
