"""One decoder block of the embedded model's shape (SmolLM2-135M: 576 wide, 1536 MLP, 9 heads / 3 kv groups) run
on 64 calibration sequences of 512 tokens, one sequence per forward (the CPU default) vs 8 per forward
(--calib-batch-size 8), random weights, fp32, alternating, median of the repeats. The block alone: the engine's
statistics hooks and activation copies are not included (benchmarks/llmcompressor/speed.py times whole prunes).

    python benchmarks/calibration_batch.py [--threads 2] [--repeats 3]
Results: benchmarks/results/calibration_batch.{json,md}
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from prunelab.record import host_description, package_versions

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, max_position_embeddings=2048)
    config._attn_implementation = "sdpa"
    block, rotary = LlamaDecoderLayer(config, 0).eval(), LlamaRotaryEmbedding(config)
    x, positions = torch.randn(64, 512, 576), torch.arange(512)[None]

    def run(batch: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, x.shape[0], batch):
                chunk = x[s:s + batch]
                block(chunk, position_embeddings=rotary(chunk, positions.expand(chunk.shape[0], -1)),
                      attention_mask=None, position_ids=positions)
        return time.perf_counter() - start

    run(8)  # warm-up
    load = Path("/proc/loadavg").read_text().split()[:3]
    times = {1: [], 8: []}
    for _ in range(args.repeats):
        for batch in times:
            times[batch].append(run(batch))
    median = {b: sorted(t)[len(t) // 2] for b, t in times.items()}
    result = {"threads": args.threads, "seconds": times, "median_seconds": median, "ratio": median[1] / median[8],
              "loadavg_start": load, "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
              "host": host_description(), "versions": package_versions()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "calibration_batch.md").write_text(
        "# One decoder block (embedded model's shape) on 64 x 512 calibration tokens, CPU fp32\n\n"
        f"{args.threads} threads, median of {args.repeats} alternating repeats; load average {' '.join(load)} at "
        f"the start ({result['host'].get('cpu_model')}).\n\n| sequences per forward | seconds |\n|---|---|\n"
        f"| 1 (CPU default) | {median[1]:.2f} |\n| 8 | {median[8]:.2f} |\n\n"
        f"Time with one sequence per forward / time with 8: {result['ratio']:.2f}.\n\n"
        "Reproduce: `python benchmarks/calibration_batch.py`\n")
    print((RESULTS / "calibration_batch.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
