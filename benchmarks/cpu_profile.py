"""Where the CPU time of a prune goes, and the floor the hardware allows.

Prunes the embedded model (protocol of core_methods.py: 64 x 512 C4 tokens, seed 0) in this process and reads the
engine's own phase timers (prunelab.json's "engine.seconds": embedding the calibration set, block forwards for
statistics, statistics accumulation inside them, the algorithm's solves, forwards for the next block's inputs,
moving blocks). It then counts the floating-point work of each phase from the model's shapes and measures this
machine's matmul rate on the same shapes, so each phase's floor is FLOPs / measured rate.

    python benchmarks/cpu_profile.py --method sparsegpt --sparsity 0.5 [--compute-dtype bfloat16] [--name NAME]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from measure import gram_gflops, linear_gflops, loadavg

RESULTS = Path(__file__).parent / "results"


def flop_model(config, tokens: int, seqlen: int, method_needs: set[str]) -> dict:
    """FLOPs of each phase for a Llama-shaped model: forwards count 2 per multiply-add of every Linear, plus
    attention (QKᵀ and AV); the statistics pass stops before the block's last Linear (down_proj)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = h // heads
    linears = {"q": h * h, "k": h * kv * head_dim, "v": h * kv * head_dim, "o": h * h, "gate": h * i, "up": h * i,
               "down": i * h}
    attention = 2 * 2 * tokens * seqlen * h  # QKᵀ and AV, the full square (SDPA's causal kernel may skip half)
    full = 2 * tokens * sum(linears.values()) + attention
    stats_pass = full - 2 * tokens * linears["down"]
    gram = 2 * tokens * (h * h * 3 + i * i) if "hessian" in method_needs else 0  # 4 distinct inputs per block
    return {"stats_forward": stats_pass * layers, "output_forward": full * (layers - 1), "gram": gram * layers,
            "per_block_linear_params": sum(linears.values())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--compute-dtype")
    parser.add_argument("--calib-batch-size", type=int)
    parser.add_argument("--name", help="results file stem (default cpu_profile_<method>)")
    args = parser.parse_args()

    import prunelab
    from prunelab.config import CalibrationConfig

    start_load = loadavg()
    result = prunelab.prune(method=args.method, sparsity=args.sparsity, device="cpu", progress=False,
                            calibration=CalibrationConfig("c4", "train", 64, 512, 0), compute_dtype=args.compute_dtype,
                            calib_batch_size=args.calib_batch_size, offload="none")
    record = result.record
    engine = record["engine"]
    config = result.model.config
    tokens = 64 * 512
    cfg = prunelab.PruneConfig.from_dict(record["config"])
    needs = set(cfg.post_steps().needs(cfg.algorithm()))
    flops = flop_model(config, tokens, 512, needs)
    batch = engine["batch_size"] * 512
    dtype = getattr(torch, args.compute_dtype) if args.compute_dtype else torch.float32
    rates = {"linear": linear_gflops(batch, config.hidden_size, config.intermediate_size, dtype,
                              kernel=engine.get("cpu_linear")),
             "gram": gram_gflops(batch, config.intermediate_size, kernel=engine.get("cpu_linear"))}
    seconds = engine["seconds"]
    rows = []
    for phase, work, rate in (("stats_forward", flops["stats_forward"], rates["linear"]),
                              ("stats_accumulate", flops["gram"], rates["gram"]),
                              ("output_forward", flops["output_forward"], rates["linear"])):
        rows.append({"phase": phase, "seconds": seconds.get(phase, 0.0), "tflop": work / 1e12,
                     "floor_seconds": work / rate / 1e9 if work else 0.0})
    rows.append({"phase": "solve", "seconds": seconds.get("solve", 0.0), "tflop": None, "floor_seconds": None})
    for phase in ("inputs", "load", "release"):
        rows.append({"phase": phase, "seconds": seconds.get(phase, 0.0), "tflop": None, "floor_seconds": None})
    out = {"method": args.method, "sparsity": args.sparsity, "compute_dtype": args.compute_dtype or "float32",
           "prune_seconds": record["prune_seconds"], "peak_rss_mib": record["peak_rss_bytes"] / 2**20,
           "engine": engine, "phases": rows, "measured_gflops": rates, "flops": flops,
           "loadavg_start": start_load, "loadavg_end": loadavg(), "versions": record["versions"],
           "host": record["host"]}
    name = args.name or f"cpu_profile_{args.method}" + (f"_{args.compute_dtype}" if args.compute_dtype else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    # the stats pass includes the accumulation time: report its forward share separately
    lines = [f"# Where the time goes: {args.method} {args.sparsity} on the embedded model (CPU)", "",
             f"prune {record['prune_seconds']:.1f} s, peak RSS {out['peak_rss_mib']:.0f} MiB, batch "
             f"{engine['batch_size']} sequences, compute dtype {out['compute_dtype']}; load average "
             f"{start_load} -> {out['loadavg_end']}. Measured rates here: Linear {rates['linear']:.1f} GFLOP/s, "
             f"XᵀX {rates['gram']:.1f} GFLOP/s (2·n·d² counted).", "",
             "| phase | seconds | TFLOP | floor at the measured rate (s) |", "|---|---|---|---|"]
    for r in rows:
        tflop = "" if r["tflop"] is None else f"{r['tflop']:.2f}"
        floor = "" if r["floor_seconds"] is None else f"{r['floor_seconds']:.1f}"
        lines.append(f"| {r['phase']} | {r['seconds']:.1f} | {tflop} | {floor} |")
    lines += ["", "stats_forward includes the time of stats_accumulate (the accumulation runs inside its hooks).",
              "", f"Reproduce: `python benchmarks/cpu_profile.py --method {args.method} --sparsity {args.sparsity}"
              + (f" --compute-dtype {args.compute_dtype}" if args.compute_dtype else "") + "`"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
