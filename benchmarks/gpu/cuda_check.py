"""The sequential engine on a CUDA GPU: same results as on the CPU, its time, and its device memory.

Needs a CUDA GPU (the lent H100/H200); no weights, data or network: the model is a Llama with SmolLM2-135M's
shapes and seeded random weights, the calibration seeded random token ids. Both only matter as inputs here.

Part 1, parity: each method on a 4-block model, once with ``device="cpu"`` and once with ``device="cuda"``
(same weights, same tokens): the fraction of weights whose kept/pruned decision differs, the largest
|Δ weight|, the largest difference of per-layer reconstruction error, and the relative difference of the
pruned models' logits. TF32 stays off (PyTorch's default), so both sides compute in float32.
Part 2, time and memory: each method on the full 30-block model with 64 x 512 tokens on the GPU: prune
seconds and peak CUDA memory against one block's parameters plus the calibration activations.

    PYTHONPATH=src python benchmarks/gpu/cuda_check.py --out DIR      # DIR/cuda_check.{json,md}
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from prunelab.algorithms.base import get_algorithm
from prunelab.api import parse_method_spec
from prunelab.engine import prune_model
from prunelab.models.adapters import ModelAdapter
from prunelab.patterns import Pattern

RUNS = [("magnitude", "0.5"), ("wanda", "0.5"), ("wanda", "2:4"), ("sparsegpt", "0.5"), ("sparsegpt", "2:4"),
        ("sparsegpt", "0.7"), ("alps", "0.7"), ("alps", "2:4"), ("mama", "0.5"), ("wanda+dsnot", "0.6"),
        ("wanda+dsnot-h", "0.6"), ("wanda+refit", "0.5")]


def smollm2_shaped(layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def prune(model, spec: str, level: str, tokens: torch.Tensor, device: str):
    name, post = parse_method_spec(spec)
    algorithm = get_algorithm(name)
    pattern = Pattern.parse(None, level, algorithm.default_scope) if ":" in level else \
        Pattern.parse(float(level), None, algorithm.default_scope)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    reports = prune_model(model, algorithm, pattern, tokens, device=device, progress=False, post=post)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return reports, time.perf_counter() - start


def weights(model) -> list[torch.Tensor]:
    adapter = ModelAdapter(model)
    return [adapter.get_weight(layer).detach().float().cpu() for _, layer in adapter.named_prunable_layers()]


def parity(runs, gpu: str, tokens_small: torch.Tensor, probe: torch.Tensor, layers: int = 4) -> list[dict]:
    base = smollm2_shaped(layers)
    rows = []
    for spec, level in runs:
        sides = {}
        for device in ("cpu", gpu):
            model = copy.deepcopy(base)
            reports, seconds = prune(model, spec, level, tokens_small, device)
            with torch.no_grad():
                logits = model(input_ids=probe).logits.double()
            sides[device] = (weights(model), reports, seconds, logits)
        (w_cpu, r_cpu, t_cpu, l_cpu), (w_gpu, r_gpu, t_gpu, l_gpu) = sides["cpu"], sides[gpu]
        total = sum(w.numel() for w in w_cpu)
        flips = sum(int(((a == 0) != (b == 0)).sum()) for a, b in zip(w_cpu, w_gpu))
        errors = [(a.reconstruction_error, b.reconstruction_error) for a, b in zip(r_cpu, r_gpu)
                  if a.reconstruction_error is not None]
        rows.append({"method": spec, "pattern": level, "mask_flip_fraction": flips / total,
                     "max_abs_weight_diff": max(float((a - b).abs().max()) for a, b in zip(w_cpu, w_gpu)),
                     "max_recon_error_diff": max((abs(a - b) for a, b in errors), default=None),
                     "mean_recon_error_cpu": sum(a for a, _ in errors) / len(errors) if errors else None,
                     "logits_rel_diff": float((l_cpu - l_gpu).norm() / l_cpu.norm()),
                     "sparsity_cpu": sum(int((w == 0).sum()) for w in w_cpu) / total,
                     "sparsity_cuda": sum(int((w == 0).sum()) for w in w_gpu) / total,
                     "seconds_cpu": t_cpu, "seconds_cuda": t_gpu})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def full_size(runs, gpu: str, tokens: torch.Tensor, budget_s: float, layers: int = 30) -> list[dict]:
    base = smollm2_shaped(layers)
    block = ModelAdapter(base).blocks[0]
    block_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    activation_bytes = tokens.numel() * base.config.hidden_size * 4
    rows, started = [], time.perf_counter()
    for spec, level in runs:
        if time.perf_counter() - started > budget_s:
            rows.append({"method": spec, "pattern": level, "skipped": "time budget of this check spent"})
            continue
        model = copy.deepcopy(base)
        _, seconds = prune(model, spec, level, tokens, gpu)
        rows.append({"method": spec, "pattern": level, "seconds_cuda": seconds,
                     "peak_cuda_bytes": torch.cuda.max_memory_allocated() if gpu == "cuda" else 0,
                     "one_block_bytes": block_bytes, "calibration_activation_bytes": activation_bytes})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="cuda_check")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for part 2 (later runs are skipped)")
    parser.add_argument("--dry-run", action="store_true", help="CPU against CPU on tiny sizes (tries the script)")
    parser.add_argument("--runs", help="only these, e.g. wanda+dsnot-h@0.6,alps@2:4 (default: all)")
    args = parser.parse_args()
    runs = [tuple(r.rsplit("@", 1)) for r in args.runs.split(",")] if args.runs else RUNS
    gpu = "cpu" if args.dry_run else "cuda"  # --dry-run: the "GPU" side is the CPU again
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: this check runs only on a GPU machine (--dry-run tries it on the CPU)", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    n, seqlen = (2, 64) if args.dry_run else (16, 512)
    small = torch.randint(0, 49152, (n, seqlen), generator=gen)
    probe = torch.randint(0, 49152, (2, 256), generator=gen)
    full = torch.randint(0, 49152, (2, 64) if args.dry_run else (64, 512), generator=gen)
    from prunelab.record import host_description, package_versions
    result = {"host": host_description(), "versions": package_versions(), "threads": torch.get_num_threads(),
              "tf32": torch.backends.cuda.matmul.allow_tf32, "dry_run": args.dry_run,
              "parity": parity(runs, gpu, small, probe, 2 if args.dry_run else 4),
              "full_size": full_size(runs, gpu, full, args.budget, 2 if args.dry_run else 30)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_check.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# CUDA check: {result['host'].get('cuda_device')}, torch {result['versions'].get('torch')}, "
             f"transformers {result['versions'].get('transformers')}, {result['threads']} CPU threads", "",
             "## CPU vs CUDA, 4-block SmolLM2-shaped random model, 16 x 512 random tokens", "",
             "| method | pattern | mask flips | max abs dW | max d(recon err) | logits rel diff | CPU s | CUDA s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["parity"]:
        derr = "-" if r["max_recon_error_diff"] is None else f"{r['max_recon_error_diff']:.2e}"
        lines.append(f"| {r['method']} | {r['pattern']} | {r['mask_flip_fraction']:.2e} | "
                     f"{r['max_abs_weight_diff']:.2e} | {derr} | {r['logits_rel_diff']:.2e} | "
                     f"{r['seconds_cpu']:.1f} | {r['seconds_cuda']:.1f} |")
    lines += ["", "## Full 30-block model, 64 x 512 tokens, on the GPU", "",
              "| method | pattern | prune s | peak CUDA MiB | one block + activations MiB |", "|---|---|---|---|---|"]
    for r in result["full_size"]:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r['pattern']} | skipped | | |")
            continue
        lines.append(f"| {r['method']} | {r['pattern']} | {r['seconds_cuda']:.1f} | {r['peak_cuda_bytes'] / 2**20:.0f} | "
                     f"{(r['one_block_bytes'] + r['calibration_activation_bytes']) / 2**20:.0f} |")
    only = f" --runs {args.runs}" if args.runs else ""
    lines += ["", f"Reproduce (on a CUDA machine, from the repository root): `PYTHONPATH=src python "
              f"benchmarks/gpu/cuda_check.py --out DIR --budget {args.budget:g}{only}`"]
    (out / "cuda_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
