"""Benchmark: one `prunelab sweep` against the same runs done one by one with `prunelab prune` + `prunelab eval`.

Both sides use the benchmark protocol (calibration 64 x 512 from C4, seed 0; WikiText-2 test, seqlen 512, first
128 windows) and include the dense evaluation. The two sides run one after the other in this process's
session, so run it on an otherwise idle machine; it also checks that both give the same perplexities.

    python benchmarks/sweep_reuse.py                                   # magnitude,wanda,sparsegpt at 0.5
    python benchmarks/sweep_reuse.py --methods magnitude --levels 0.3,0.6
Results: benchmarks/results/sweep_reuse.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512"]
CLI = [sys.executable, "-m", "prunelab.cli"]


def timed(cmd: list[str]) -> float:
    print("$", " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def label(key: tuple[str, float]) -> str:
    method, level = key
    return method if method == "dense" else f"{method} {level:g}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--levels", default="0.5")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prunelab-reuse-"))
    try:
        store = work / "sweep.db"
        sweep_seconds = timed([*CLI, "sweep", "--models", args.model, "--methods", args.methods, "--levels", args.levels,
                               *CALIB, "--seeds", "0", "--eval", "wikitext2", "--eval-seqlen", "512",
                               "--eval-windows", "128", "--store", str(store), "--quiet"])
        sweep_ppl, inside = {}, {}  # inside: (prune s, eval s) of each run as the sweep measured them
        with sqlite3.connect(store) as db:
            for m, lv, metrics, record in db.execute("SELECT method, level, metrics, record FROM runs "
                                                     "WHERE status='done'"):
                sweep_ppl[(m, round(lv, 6))] = json.loads(metrics)["perplexity"]["wikitext2"]["ppl"]
                record = json.loads(record)
                inside[(m, round(lv, 6))] = (record["prune_seconds"], record["eval_seconds"])

        separate, separate_ppl = [], {}
        eval_flags = ["--data", "wikitext2", "--split", "test", "--seqlen", "512", "--max-windows", "128", "--quiet"]
        out = work / "dense.json"
        separate.append((("dense", 0.0), 0.0, timed([*CLI, "eval", args.model, *eval_flags, "--json", str(out)])))
        separate_ppl[("dense", 0.0)] = json.loads(out.read_text())["ppl"]
        for method in args.methods.split(","):
            for level in args.levels.split(","):
                folder, out = work / f"{method}-{level}", work / f"{method}-{level}.json"
                t_prune = timed([*CLI, "prune", "--model", args.model, "--method", method, "--sparsity", level, *CALIB,
                                 "--seed", "0", "--out", str(folder), "--quiet"])
                t_eval = timed([*CLI, "eval", str(folder), *eval_flags, "--json", str(out)])
                key = (method, round(float(level), 6))
                separate.append((key, t_prune, t_eval))
                separate_ppl[key] = json.loads(out.read_text())["ppl"]
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = sum(tp + te for _, tp, te in separate)
    same = all(sweep_ppl.get(k) == v for k, v in separate_ppl.items())
    # The floor: what the sweep spent inside its runs (pruning and evaluating each model), which no reuse of
    # method- and level-independent work can remove; the rest of its wall time is its own start-up.
    floor = sum(p + e for p, e in inside.values())
    from prunelab.record import host_description, package_versions
    result = {"methods": args.methods, "levels": args.levels, "sweep_seconds": sweep_seconds,
              "separate_seconds": {label(k): {"prune": tp, "eval": te} for k, tp, te in separate},
              "separate_total_seconds": total, "ratio": sweep_seconds / total,
              "sweep_inside_runs_seconds": {label(k): {"prune": p, "eval": e} for k, (p, e) in inside.items()},
              "floor_seconds": floor, "floor_ratio": floor / total,
              "identical_perplexities": same, "sweep_ppl": {f"{m} {lv}": p for (m, lv), p in sweep_ppl.items()},
              "separate_ppl": {f"{m} {lv}": p for (m, lv), p in separate_ppl.items()},
              "versions": package_versions(), "host": host_description(), "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep_reuse.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# One sweep vs the same runs one by one", "",
             f"{args.model}; methods {args.methods} at levels {args.levels}, plus the dense evaluation; calibration "
             "64 x 512 C4 seed 0; WikiText-2 test seqlen 512, first 128 windows. "
             f"{result['host']['cpu_count']} CPUs, torch {result['versions']['torch']}, {result['date']}.", "",
             "| run | one by one: prune s | one by one: eval s | inside the sweep: prune s | inside the sweep: eval s |",
             "|---|---|---|---|---|"]
    for key, tp, te in separate:
        p, e = inside.get(key, (float("nan"), float("nan")))
        lines.append(f"| {label(key)} | {tp:.1f} | {te:.1f} | {p:.1f} | {e:.1f} |")
    lines += [f"| **total** | **{total:.1f}** (both) | | **{floor:.1f}** (both) | |", "",
              f"`prunelab sweep` of the same runs: **{sweep_seconds:.1f} s = {result['ratio']:.3f} x** the one-by-one total.",
              f"Perplexities identical on both sides: {same}.", "",
              f"Inside its runs the sweep spent {floor:.1f} s = {result['floor_ratio']:.3f} x the one-by-one total on "
              "pruning and evaluating each model: work that depends on the run's weights, so no reuse can remove it "
              "without changing the numbers; the one-by-one side's 'prune s' and 'eval s' include each command's "
              "start-up, model load and (prune) checkpoint write, which the sweep does once.", "",
              f"Reproduce: `python benchmarks/sweep_reuse.py --methods {args.methods} --levels {args.levels}`", ""]
    (RESULTS / "sweep_reuse.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
