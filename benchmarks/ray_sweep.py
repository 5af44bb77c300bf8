"""A 4-run sweep on local Ray (2 workers x 1 thread) vs the local executor (one process, 2 threads).

Same sweep both ways (wanda and sparsegpt at 50% and 70% on the embedded model, 32 x 512 C4 calibration tokens,
WikiText-2 perplexity at seqlen 512 over the first 32 windows), each as its own `prunelab sweep` process into its
own store; wall time of each command, the per-run seconds from the stores, and every number compared between
the two stores.

    python benchmarks/ray_sweep.py
Results: benchmarks/results/ray_sweep.{json,md}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import loadavg  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = ["--methods", "wanda,sparsegpt", "--levels", "0.5,0.7", "--calib", "c4", "--calib-samples", "32",
         "--calib-seqlen", "512", "--eval", "wikitext2", "--eval-seqlen", "512", "--eval-windows", "32",
         "--eval-batch-size", "8", "--device", "cpu", "--quiet"]


def sweep(store: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "prunelab.cli", "sweep", *SWEEP, "--store", str(store), *extra]
    start, load = time.perf_counter(), loadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
    return {"command": " ".join(cmd[2:]).replace("prunelab.cli", "prunelab"), "wall_seconds": time.perf_counter() - start,
            "loadavg": [load, loadavg()], "log": proc.stdout.splitlines()[-12:]}


def rows(store: Path) -> dict:
    from prunelab.bench import ResultsStore

    s = ResultsStore(store)
    try:
        return {r["key"]: r for r in s.rows()}
    finally:
        s.close()


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    work = Path(tempfile.mkdtemp(prefix="prunelab-ray-bench-"))
    local = sweep(work / "local.db", [])
    ray = sweep(work / "ray.db", ["--executor", "ray", "--cpus-per-run", "1"])
    a, b = rows(work / "local.db"), rows(work / "ray.db")
    same_keys = set(a) == set(b)
    diffs = [a[k]["method"] + f" {a[k]['level']}" for k in a if k in b and a[k]["metrics"] != b[k]["metrics"]]
    runs = {name: [{"method": r["method"], "level": r["level"], "status": r["status"],
                    "wall_seconds": (r.get("record") or {}).get("wall_seconds"),
                    "prune_seconds": (r.get("record") or {}).get("prune_seconds"),
                    "torch_threads": ((r.get("record") or {}).get("host") or {}).get("torch_threads"),
                    "ppl": next(iter(r["metrics"]["perplexity"].values()))["ppl"] if r.get("metrics") else None}
                   for r in store.values()] for name, store in (("local", a), ("ray", b))}
    result = {"local": local, "ray": ray, "same_keys": same_keys, "metrics_differ": diffs, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# A 4-run sweep: local Ray (2 workers x 1 thread) vs the local executor (2 threads)", "",
             "wanda and sparsegpt at 50% and 70% (+ the dense evaluation) on the embedded model, 32 x 512 C4 "
             "calibration tokens, WikiText-2 ppl at seqlen 512 over 32 windows; each sweep is one command from start "
             "(imports, Ray start-up, model loads) to end.", "",
             "| executor | wall s | runs done | load avg start -> end |", "|---|---|---|---|",
             f"| local (1 process, 2 threads) | {local['wall_seconds']:.0f} | {sum(r['status'] == 'done' for r in runs['local'])} "
             f"| {local['loadavg'][0]} -> {local['loadavg'][1]} |",
             f"| Ray (2 tasks at once, 1 thread each) | {ray['wall_seconds']:.0f} | {sum(r['status'] == 'done' for r in runs['ray'])} "
             f"| {ray['loadavg'][0]} -> {ray['loadavg'][1]} |", "",
             f"Ray / local wall time: {ray['wall_seconds'] / local['wall_seconds']:.2f}. Same run keys: {same_keys}; "
             f"runs whose stored metrics differ between the executors: {diffs or 'none'}.", "",
             "| run | local wall s | Ray wall s | ppl (local) | ppl (Ray) |", "|---|---|---|---|---|"]
    by = {(r["method"], r["level"]): r for r in runs["ray"]}
    for r in runs["local"]:
        o = by.get((r["method"], r["level"]), {})
        lines.append(f"| {r['method']} {r['level']:g} | {r['wall_seconds'] or 0:.0f} | {o.get('wall_seconds') or 0:.0f} | "
                     f"{r['ppl']:.3f} | {o.get('ppl', float('nan')):.3f} |")
    lines += ["", "Reproduce: `python benchmarks/ray_sweep.py`"]
    (RESULTS / "ray_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
