"""Sparse matmul on CPU against dense, for the embedded model's layer shapes: where does sparsity pay?

For every Linear shape of SmolLM2-135M (q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536), unstructured
random masks at several sparsities, and the two shapes of inference (decode: 1 token; prefill: 512 tokens), time
y = x Wᵀ with
  - dense: torch.nn.functional.linear (MKL sgemm/sgemv),
  - csr:   prunelab.kernels.CSRLinear (torch.sparse CSR, int32 indices, torch.sparse.mm -> MKL sparse BLAS),
  - bsr:   torch.sparse BSR with 4x4 blocks (a block is stored when any of its 16 weights is kept).
Like decode in a real model, each timing cycles through 30 distinct matrices of the shape (one per decoder block),
so the weights come from memory, not from a warm cache (``--hot`` repeats one matrix instead). Median of the
repeats, ``--threads`` threads (default 2). Rows are kept in the JSON as they finish; a rerun skips them.

    python benchmarks/sparse_kernels.py [--threads 2] [--sparsities 0.5,0.7,...] [--out benchmarks/results/sparse_kernels]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch

SHAPES = {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576), "gate_proj/up_proj": (1536, 576),
          "down_proj": (576, 1536)}
TOKENS = {"decode": 1, "prefill": 512}
LAYERS = 30  # decoder blocks of the embedded model


def build_kernels(weights: list[torch.Tensor], kernel: str):
    from prunelab.kernels import CSRLinear

    if kernel == "dense":
        return [lambda x, w=w: torch.nn.functional.linear(x, w) for w in weights]
    if kernel == "csr":
        return [CSRLinear(w, None) for w in weights]
    if kernel == "bsr":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            blocks = [w.to_sparse_bsr((4, 4)) for w in weights]
        return [lambda x, b=b: torch.sparse.mm(b, x.t().contiguous()).t() for b in blocks]
    raise ValueError(kernel)


def time_kernel(fns, x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per layer call, one value per repeat (each repeat = one pass over every matrix)."""
    from prunelab.kernels import pass_times

    return [t / len(fns) for t in pass_times(fns, x, repeats)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,0.8,0.9,0.95")
    ap.add_argument("--kernels", default="dense,csr,bsr")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--hot", action="store_true", help="one matrix repeated (weights in cache) instead of 30")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sparse_kernels"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    saved = json.loads(out_json.read_text()) if out_json.is_file() else {}
    rows = saved.get("rows", [])
    done = {(r["shape"], r["sparsity"], r["phase"], r["kernel"], r["hot"]) for r in rows}
    loads = saved.get("loadavg", [])
    loads.append({"start": os.getloadavg()})
    layers = 1 if args.hot else LAYERS
    for shape_name, (out_f, in_f) in SHAPES.items():
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            g = torch.Generator().manual_seed(0)
            weights = []
            for _ in range(layers):
                w = torch.randn(out_f, in_f, generator=g)
                weights.append(w.masked_fill(torch.rand(out_f, in_f, generator=g) < sparsity, 0.0))
            for kernel in args.kernels.split(","):
                todo = [p for p in TOKENS if (shape_name, sparsity, p, kernel, args.hot) not in done]
                if not todo:
                    continue
                fns = build_kernels(weights, kernel)
                for phase in todo:
                    x = torch.randn(TOKENS[phase], in_f, generator=g)
                    repeats = args.repeats if phase == "decode" else max(3, args.repeats // 2)
                    values = time_kernel(fns, x, repeats)
                    row = {"shape": shape_name, "out": out_f, "in": in_f, "sparsity": sparsity, "phase": phase,
                           "tokens": TOKENS[phase], "kernel": kernel, "hot": args.hot, "threads": args.threads,
                           "seconds": statistics.median(values), "min": min(values), "max": max(values)}
                    rows.append(row)
                    done.add((shape_name, sparsity, phase, kernel, args.hot))
                    print(f"{shape_name:<18} {sparsity:.2f} {phase:<8} {kernel:<6} {row['seconds'] * 1e6:9.1f} us",
                          flush=True)
                    loads[-1]["end"] = os.getloadavg()
                    out_json.write_text(json.dumps({"rows": rows, "loadavg": loads,
                                                    "torch": torch.__version__}, indent=1))
                del fns
    loads[-1]["end"] = os.getloadavg()
    out_json.write_text(json.dumps({"rows": rows, "loadavg": loads, "torch": torch.__version__}, indent=1))
    out_md.write_text(render(rows, loads))
    print(out_md.read_text())
    return 0


def crossover(rows, shape, phase, kernel, hot) -> str:
    """The lowest measured sparsity from which ``kernel`` stays faster than dense (or 'never' / 'always')."""
    points = sorted((r["sparsity"], r["seconds"]) for r in rows
                    if (r["shape"], r["phase"], r["kernel"], r["hot"]) == (shape, phase, kernel, hot))
    dense = {r["sparsity"]: r["seconds"] for r in rows
             if (r["shape"], r["phase"], r["kernel"], r["hot"]) == (shape, phase, "dense", hot)}
    faster = [s for s, t in points if s in dense and t < dense[s]]
    if not faster:
        return f"never (up to {points[-1][0]:.2f})" if points else "-"
    first = faster[0]
    if all(s in faster for s, _ in points if s >= first):
        lower = [s for s, _ in points if s < first]
        return f"{first:.2f}" + (f" (slower at {lower[-1]:.2f})" if lower else " (faster at every level)")
    return "mixed: faster at " + ", ".join(f"{s:.2f}" for s in faster)


def render(rows, loads) -> str:
    kernels = sorted({r["kernel"] for r in rows}, key=["dense", "csr", "bsr"].index)
    sparsities = sorted({r["sparsity"] for r in rows})
    lines = ["# Sparse matmul kernels on CPU vs dense (embedded model's layer shapes)", "",
             "Command: `python benchmarks/sparse_kernels.py` (under the heavy lock). Random unstructured masks; "
             "time per layer call in microseconds (median of the repeats), each pass cycling through 30 distinct "
             "matrices of the shape (weights from memory, as in a real forward), unless marked hot. "
             "Speedup = dense time / kernel time (>1: the sparse kernel is faster).", "",
             f"Load averages (1/5/15 min) at start and end of each invocation: "
             + "; ".join(f"{tuple(round(v, 2) for v in l['start'])} -> {tuple(round(v, 2) for v in l.get('end', l['start']))}"
                         for l in loads), ""]
    for hot in sorted({r["hot"] for r in rows}):
        for phase in TOKENS:
            lines += [f"## {phase} ({TOKENS[phase]} token{'s' if TOKENS[phase] > 1 else ''} per call)"
                      + (" — hot cache" if hot else ""), "",
                      "| shape | kernel | " + " | ".join(f"{s:.2f}" for s in sparsities) + " |",
                      "|---|---|" + "---|" * len(sparsities)]
            for shape in SHAPES:
                dense = {r["sparsity"]: r["seconds"] for r in rows
                         if (r["shape"], r["phase"], r["kernel"], r["hot"]) == (shape, phase, "dense", hot)}
                for kernel in kernels:
                    cells = []
                    for s in sparsities:
                        r = next((r for r in rows if (r["shape"], r["sparsity"], r["phase"], r["kernel"], r["hot"])
                                  == (shape, s, phase, kernel, hot)), None)
                        if r is None:
                            cells.append("-")
                        elif kernel == "dense":
                            cells.append(f"{r['seconds'] * 1e6:.0f}")
                        else:
                            cells.append(f"{r['seconds'] * 1e6:.0f} ({dense[s] / r['seconds']:.2f}x)" if s in dense
                                         else f"{r['seconds'] * 1e6:.0f}")
                    lines.append(f"| {shape} | {kernel} | " + " | ".join(cells) + " |")
            lines.append("")
            lines += ["Crossover (lowest sparsity from which the kernel is faster than dense):", ""]
            for shape in SHAPES:
                for kernel in kernels:
                    if kernel != "dense":
                        lines.append(f"- {shape}, {kernel}: {crossover(rows, shape, phase, kernel, hot)}")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
