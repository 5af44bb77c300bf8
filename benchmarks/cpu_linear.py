"""aten (MKL sgemm, sdpa) vs oneDNN for the engine's float32 products on this CPU (engine/linear.py, stats.py,
engine/attention.py).

Four measurements, each interleaving the kernels round by round so a drift of the machine's speed hits both:
1. the decoder's Linear shapes on one calibration sequence (512 tokens x 576 -> 1536, 1536 -> 576, 576 -> 576,
   576 -> 192), GFLOP/s;
2. whole forwards of block 0 of the embedded model on 16 calibration-length sequences, ms per forward, and the
   largest difference between the two kernels' outputs; oneDNN with and without its causal attention;
3. XᵀX accumulation of 512-token sequences at the decoder's input widths (576, 1536), as the engine's statistics
   do it, GFLOP/s counted as the full product (2·tokens·width²; both kernels compute only its upper panels);
4. causal attention alone at the embedded model's shapes (512 tokens, 9 query heads over 3 key heads, head dim 64):
   sdpa (torch's flash kernel) vs prunelab/onednn.py's chunked kernel, ms and largest difference.
Medians over the rounds are reported.

    python benchmarks/cpu_linear.py [--rounds 7] [--name cpu_linear]
Results: benchmarks/results/<name>.{json,md}
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import cpu_description, gram_gflops, linear_gflops, loadavg, write_markdown  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPES = [(512, 576, 1536), (512, 1536, 576), (512, 576, 576), (512, 576, 192)]


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> int:
    import torch.nn.functional as F

    from prunelab import onednn
    from prunelab.engine.linear import cpu_kernels, linear_kernel, onednn_available
    from prunelab.models.adapters import ModelAdapter
    from prunelab.models.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="cpu_linear", help="results file stem")
    args = parser.parse_args()
    if not onednn_available():
        raise SystemExit("this torch build has no oneDNN linear kernel: nothing to compare")
    torch.manual_seed(0)
    kernels = ("aten", "onednn")
    start_load = loadavg()

    gemm = {}
    with torch.no_grad():
        for tokens, k, n in SHAPES:
            rates = {kernel: [] for kernel in kernels}
            for _ in range(args.rounds):
                for kernel in kernels:
                    rates[kernel].append(linear_gflops(tokens, k, n, repeat=20, kernel=kernel))
            gemm[f"{tokens}x{k}->{n}"] = {kernel: statistics.median(v) for kernel, v in rates.items()}

        gram = {}
        for width in (576, 1536):
            rates = {kernel: [] for kernel in kernels}
            for _ in range(args.rounds):
                for kernel in kernels:
                    rates[kernel].append(gram_gflops(512, width, repeat=10, kernel=kernel))
            gram[f"512x{width}"] = {kernel: statistics.median(v) for kernel, v in rates.items()}

        model, _, _ = load_model("smollm2-135m")
        adapter = ModelAdapter(model)
        ids = torch.randint(0, model.config.vocab_size, (16, 512), generator=torch.Generator().manual_seed(0))
        call = adapter.record_block_calls(ids)[0]
        hidden = adapter.block_inputs(ids)
        block = adapter.blocks[0]
        # "onednn" is what the engine runs (Linear layers and attention); "onednn_linear" its Linear layers alone
        variants = {"aten": lambda: linear_kernel(block, "aten"), "onednn_linear": lambda: linear_kernel(block, "onednn"),
                    "onednn": lambda: cpu_kernels(block, "onednn")}
        per_forward = {name: [] for name in variants}
        outputs = {}
        for _ in range(args.rounds):
            for name, context in variants.items():
                with context():
                    start = time.perf_counter()
                    outputs[name] = torch.cat([adapter.run_block(block, hidden[i:i + 1], call) for i in range(16)])
                    per_forward[name].append((time.perf_counter() - start) / 16 * 1e3)

        heads, kv_heads, dim = model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, h, 512, dim, generator=g) for h in (heads, kv_heads, kv_heads))
        attention = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=dim ** -0.5,
                                                                    enable_gqa=True).transpose(1, 2).contiguous(),
                     "onednn": lambda: onednn.causal_attention(q, k, v, dim ** -0.5)}
        attention_runs = {name: [] for name in attention}
        for _ in range(args.rounds):
            for name, fn in attention.items():
                attention_runs[name].append(timed(fn, 20) * 1e3)
        attention_ms = {name: statistics.median(v) for name, v in attention_runs.items()}
        attention_diff = float((attention["onednn"]() - attention["sdpa"]()).abs().max())
    block_ms = {name: statistics.median(v) for name, v in per_forward.items()}
    max_diff = float((outputs["onednn"] - outputs["aten"]).abs().max())
    scale = float(outputs["aten"].abs().max())

    result = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "rounds": args.rounds, "gemm_gflops": gemm, "gram_gflops": gram, "block_ms_per_forward": block_ms,
              "block_ms_all_rounds": per_forward, "block_output_max_abs_diff": max_diff,
              "block_output_max_abs": scale, "attention_ms": attention_ms, "attention_ms_all_rounds": attention_runs,
              "attention_max_abs_diff": attention_diff, "loadavg_start": start_load, "loadavg_end": loadavg()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = ["# float32 kernels of the engine's block forwards and statistics: aten (MKL sgemm) vs oneDNN", "",
             f"{result['cpu']}, {result['threads']} threads, torch {torch.__version__}; medians of {args.rounds} "
             "interleaved rounds.", "",
             "| shape (tokens x in -> out) | aten GFLOP/s | oneDNN GFLOP/s | oneDNN / aten |", "|---|---|---|---|"]
    for shape, r in gemm.items():
        lines.append(f"| {shape} | {r['aten']:.0f} | {r['onednn']:.0f} | {r['onednn'] / r['aten']:.2f} |")
    lines += ["", "| XᵀX accumulation, tokens x width | aten GFLOP/s | oneDNN GFLOP/s | oneDNN / aten |",
              "|---|---|---|---|"]
    for shape, r in gram.items():
        lines.append(f"| {shape} | {r['aten']:.0f} | {r['onednn']:.0f} | {r['onednn'] / r['aten']:.2f} |")
    lines += ["", "| embedded model, block 0, 512-token sequences | aten (MKL, sdpa) | oneDNN Linear, sdpa | "
              "oneDNN Linear and attention (the engine) | engine / aten |", "|---|---|---|---|---|",
              f"| ms per block forward | {block_ms['aten']:.1f} | {block_ms['onednn_linear']:.1f} | "
              f"{block_ms['onednn']:.1f} | {block_ms['onednn'] / block_ms['aten']:.2f} |", "",
              "| causal attention, 512 tokens, 9 heads over 3 key heads, dim 64 | sdpa (flash) | oneDNN chunked | "
              "oneDNN / sdpa |", "|---|---|---|---|",
              f"| ms | {attention_ms['sdpa']:.2f} | {attention_ms['onednn']:.2f} | "
              f"{attention_ms['onednn'] / attention_ms['sdpa']:.2f} |", "",
              f"Largest difference between the attention outputs: {attention_diff:.2e}.", "",
              f"Largest difference between the two kernels' block outputs: {max_diff:.2e} (outputs up to {scale:.1f}): "
              "float32 rounding of another summation order.", "",
              f"Load average {start_load} -> {result['loadavg_end']}.", "",
              f"Reproduce: `python benchmarks/cpu_linear.py --name {args.name}`"]
    write_markdown(RESULTS / f"{args.name}.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
