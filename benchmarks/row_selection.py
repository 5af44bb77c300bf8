"""Wanda's per-row selection on the seven layer shapes of one Llama-2-7B block: a full stable argsort per row (the
selection before 2026-12-01) vs per-row introselect (prunelab.patterns.lowest_k_per_row_mask). Same masks.

    python benchmarks/row_selection.py [--threads 1]
Results: benchmarks/results/row_selection.{json,md}
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunelab.patterns as patterns
from prunelab.algorithms import get_algorithm
from prunelab.patterns import Pattern
from prunelab.record import host_description, package_versions
from prunelab.stats import LayerStats

RESULTS = Path(__file__).parent / "results"
SHAPES = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]  # q, k, v, o, gate, up, down


def argsort_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], True)
    return mask


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = {s: torch.randn(s, generator=g) for s in set(SHAPES)}
    stats = {s: LayerStats(n_tokens=1, sq_norm=torch.rand(s[1], generator=g)) for s in set(SHAPES)}
    wanda, pattern = get_algorithm("wanda"), Pattern(0.5, scope="row")
    selection = patterns.lowest_k_per_row_mask
    seconds, outputs = {}, {}
    for name, fn in (("argsort", argsort_rows), ("introselect", selection)):
        patterns.lowest_k_per_row_mask = fn  # select_pruned looks it up in the module at call time
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[name] = [wanda.prune(weights[s], stats[s], pattern) for s in SHAPES]
            times.append(time.perf_counter() - start)
        seconds[name] = sorted(times)[len(times) // 2]
    patterns.lowest_k_per_row_mask = selection
    same = all(torch.equal(a, b) for a, b in zip(outputs["argsort"], outputs["introselect"]))
    result = {"threads": args.threads, "repeats": args.repeats, "seconds_per_block": seconds, "same_weights": same,
              "speedup": seconds["argsort"] / seconds["introselect"], "host": host_description(),
              "versions": package_versions(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "row_selection.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "row_selection.md").write_text(
        "# Wanda 50% (row scope) on one Llama-2-7B block's layer shapes, CPU\n\n"
        f"{args.threads} thread(s), median of {args.repeats}; random weights and input norms; whole `Wanda.prune` "
        "(scores, selection, zeroing) of q, k, v, o (4096x4096), gate, up (11008x4096), down (4096x11008).\n\n"
        "| selection | seconds per block |\n|---|---|\n"
        f"| stable argsort per row (before) | {seconds['argsort']:.2f} |\n"
        f"| introselect per row (now) | {seconds['introselect']:.2f} |\n\n"
        f"Speed-up {result['speedup']:.1f}x; identical pruned weights: {same}. Load average at the end: "
        f"{' '.join(result['loadavg'])} ({result['host'].get('cpu_model')}).\n\n"
        "Reproduce: `python benchmarks/row_selection.py`\n")
    print((RESULTS / "row_selection.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
