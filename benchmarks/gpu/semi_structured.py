"""2:4 sparsity on a GPU: torch.sparse.to_sparse_semi_structured against dense, fp16 and bf16.

Cases: prefill shapes (tokens x in -> out) of the embedded model's layers (SmolLM2-135M: q/o 576x576, k/v
192x576, gate/up 1536x576, down 576x1536) and of a Llama-3-8B MLP (gate/up 14336x4096, down 4096x14336), at 512,
2048 and 8192 tokens. For each: W with a 2:4 mask (the 2 smallest |w| of every 4 consecutive input columns
zeroed, as prunelab's --pattern 2:4), y = F.linear(x, W) dense against F.linear(x, to_sparse_semi_structured(W)),
timed with CUDA events (median of --iters after warm-up), both sparse backends where available (cuSPARSELt and
CUTLASS), and the largest |y_sparse − y_dense| relative to max |y_dense| as a check that both compute the same.
Ideal speedup of a 2:4 kernel: 2x in multiply-adds (values); weight bytes 0.5x + metadata.

Needs a CUDA GPU with sparse tensor cores (Ampere or newer).
``--dry-run`` runs on any CPU: it builds every case's masked weights (small token counts), checks the shapes
against the semi-structured layout's constraints and the 2:4 pattern, and prints the plan; it times nothing.

    PYTHONPATH=src python benchmarks/gpu/semi_structured.py [--out benchmarks/results/semi_structured_gpu]
    PYTHONPATH=src python benchmarks/gpu/semi_structured.py --dry-run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

LAYERS = {
    "smollm2-135m q_proj/o_proj": (576, 576), "smollm2-135m k_proj/v_proj": (192, 576),
    "smollm2-135m gate_proj/up_proj": (1536, 576), "smollm2-135m down_proj": (576, 1536),
    "llama-8b gate_proj/up_proj": (14336, 4096), "llama-8b down_proj": (4096, 14336),
}
TOKENS = (512, 2048, 8192)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def two_of_four(weight: torch.Tensor) -> torch.Tensor:
    """Zero the 2 smallest |w| in every group of 4 consecutive input columns (prunelab's 2:4)."""
    out_f, in_f = weight.shape
    groups = weight.reshape(out_f, in_f // 4, 4)
    drop = groups.abs().argsort(dim=-1, stable=True)[..., :2]
    return groups.scatter(-1, drop, 0.0).reshape(out_f, in_f)


def layout_problem(out_f: int, in_f: int, tokens: int) -> str | None:
    """Why a shape cannot use the semi-structured layout (None if it can). PyTorch's documented minimum for
    fp16/bf16 is 32 x 64 (rows x cols of the sparse operand), both multiples of those; dense rows multiple of 8."""
    if out_f % 32 or in_f % 64:
        return f"weight {out_f}x{in_f} is not a multiple of 32x64"
    if tokens % 8:
        return f"{tokens} tokens is not a multiple of 8"
    return None


def cuda_time(fn, iters: int) -> list[float]:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def run_case(name, out_f, in_f, tokens, dtype_name, iters) -> list[dict]:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    dtype = DTYPES[dtype_name]
    g = torch.Generator(device="cuda").manual_seed(0)
    weight = two_of_four(torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=g))
    x = torch.randn(tokens, in_f, device="cuda", dtype=dtype, generator=g)
    dense_times = cuda_time(lambda: torch.nn.functional.linear(x, weight), iters)
    reference = torch.nn.functional.linear(x, weight).float()
    rows = []
    for backend, force_cutlass in (("cusparselt", False), ("cutlass", True)):
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        row = {"layer": name, "out": out_f, "in": in_f, "tokens": tokens, "dtype": dtype_name, "backend": backend,
               "dense_s": statistics.median(dense_times)}
        try:
            sparse_weight = to_sparse_semi_structured(weight)
            sparse_times = cuda_time(lambda: torch.nn.functional.linear(x, sparse_weight), iters)
            y = torch.nn.functional.linear(x, sparse_weight).float()
            row.update({"sparse_s": statistics.median(sparse_times), "speedup": row["dense_s"] / statistics.median(sparse_times),
                        "max_rel_diff": float((y - reference).abs().max() / reference.abs().max())})
        except (RuntimeError, NotImplementedError, ValueError) as exc:  # backend missing on this build/GPU
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return rows


def dry_run() -> int:
    """Every case's construction on the CPU (small token counts), shape checks and the plan; no timing."""
    print("dry run on", "CUDA" if torch.cuda.is_available() else "CPU", "- nothing is timed")
    cases = 0
    for name, (out_f, in_f) in LAYERS.items():
        g = torch.Generator().manual_seed(0)
        weight = two_of_four(torch.randn(out_f, in_f, generator=g))
        kept = (weight.reshape(out_f, in_f // 4, 4) != 0).sum(-1)
        assert int(kept.max()) <= 2, name
        x = torch.randn(8, in_f, generator=g)
        assert torch.nn.functional.linear(x, weight).shape == (8, out_f)
        for tokens in TOKENS:
            for dtype_name in DTYPES:
                problem = layout_problem(out_f, in_f, tokens)
                print(f"  {name:<32} {out_f:>6}x{in_f:<6} tokens {tokens:>5} {dtype_name:<9} "
                      + (f"SKIP: {problem}" if problem else "dense vs semi-structured (cuSPARSELt, CUTLASS)"))
                cases += 1
    print(f"{cases} cases planned; run without --dry-run on a CUDA GPU to measure them")
    return 0


def render(rows, device_name) -> str:
    lines = ["# 2:4 semi-structured sparsity vs dense on a GPU", "",
             f"Device: {device_name}. Command: `PYTHONPATH=src python benchmarks/gpu/semi_structured.py`. "
             "y = F.linear(x, W), x of (tokens, in); median time over the iterations; speedup = dense / sparse.", "",
             "| layer | W (out x in) | tokens | dtype | backend | dense ms | 2:4 ms | speedup | max rel diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['layer']} | {r['out']}x{r['in']} | {r['tokens']} | {r['dtype']} | {r['backend']} | "
                         f"{r['dense_s'] * 1e3:.3f} | n/a | n/a | {r['error']} |")
        else:
            lines.append(f"| {r['layer']} | {r['out']}x{r['in']} | {r['tokens']} | {r['dtype']} | {r['backend']} | "
                         f"{r['dense_s'] * 1e3:.3f} | {r['sparse_s'] * 1e3:.3f} | {r['speedup']:.2f}x | "
                         f"{r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="build and check every case on the CPU; time nothing")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "results" / "semi_structured_gpu"))
    args = ap.parse_args(argv)
    if args.dry_run:
        return dry_run()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run, or on a GPU", file=sys.stderr)
        return 2
    rows = []
    for name, (out_f, in_f) in LAYERS.items():
        for tokens in TOKENS:
            if layout_problem(out_f, in_f, tokens):
                continue
            for dtype_name in DTYPES:
                rows += run_case(name, out_f, in_f, tokens, dtype_name, args.iters)
                print(json.dumps(rows[-1]), flush=True)
    device_name = torch.cuda.get_device_name(0)
    Path(args.out + ".json").write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows},
                                                   indent=1))
    Path(args.out + ".md").write_text(render(rows, device_name))
    print(render(rows, device_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
