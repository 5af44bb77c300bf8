"""Benchmark: matmul throughput per dtype on this CPU at the embedded model's block shapes.

Why: `--compute-dtype bfloat16` can only speed the block forwards up where the CPU has bf16 instructions
(AVX512-BF16 or AMX); elsewhere PyTorch emulates bf16 matmuls and they are far slower than fp32. This measures
which case the host is in, so a bf16 timing target is judged against the hardware it ran on.

    python benchmarks/cpu_dtypes.py [--threads 2]
Results: benchmarks/results/cpu_dtypes.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
# (tokens, in, out) of one calibration sequence through SmolLM2-135M's projections
SHAPES = [(512, 576, 576), (512, 576, 1536), (512, 1536, 576)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
    return {"model_name": model, **{f: f in present for f in FLAGS}}


def gflops(dtype, shape, min_seconds: float) -> float:
    m, k, n = shape
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        a @ b
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per (dtype, shape)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [{"dtype": name, "shape": list(shape), "gflops": gflops(dtype, shape, args.seconds)}
            for name, dtype in DTYPES.items() for shape in SHAPES]
    fp32 = {tuple(r["shape"]): r["gflops"] for r in rows if r["dtype"] == "float32"}
    for r in rows:
        r["vs_float32"] = r["gflops"] / fp32[tuple(r["shape"])]
    load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    result = {"threads": args.threads, "cpu": cpu_flags(), "torch": torch.__version__, "loadavg": load, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_dtypes.json").write_text(json.dumps(result, indent=2) + "\n")
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in result["cpu"].items() if f != "model_name")
    lines = ["# Matmul throughput per dtype on this CPU (block shapes of the embedded model)", "",
             f"CPU: {result['cpu'].get('model_name')}; {flags}. torch {torch.__version__}, {args.threads} threads, "
             f"load average {load[0]:.2f} at the end.", "",
             "| dtype | tokens x in x out | GFLOP/s | vs float32 |", "|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {' x '.join(map(str, r['shape']))} | {r['gflops']:.1f} | {r['vs_float32']:.3f}x |"
              for r in rows]
    lines += ["", "A dtype slower than float32 here makes `--compute-dtype` of that dtype slower, not faster, on "
              "this host.", "", f"Reproduce: `python benchmarks/cpu_dtypes.py --threads {args.threads}`", ""]
    (RESULTS / "cpu_dtypes.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
