"""The engine on a GPU at 8B scale: Wanda 50%, SparseGPT 50% and ALPS 70% on a random-initialised Llama with
Llama-3-8B's dimensions in bfloat16, 128 x 2048 calibration tokens, timed end to end with the GPU memory peak.

The weights are seeded random (only the engine's time and memory are measured; the pruned model's quality means
nothing). The model is built on the GPU (fast initialisation), then kept where ``--resident`` says: ``cpu`` (the
normal flow: the model in host memory, one block at a time on the GPU) or ``gpu``. Each run starts from the same
weights (restored from a host copy of the decoder blocks). For every run: seconds for the whole prune (calibration
embedding, statistics, solves, next-block forwards, moves), the engine's own phase timers, peak GPU memory
(torch.cuda.max_memory_allocated) and the sparsity reached.

    python benchmarks/gpu/llama8b_engine.py                 # on a CUDA machine: benchmarks/results/gpu_llama8b.{json,md}
    python benchmarks/gpu/llama8b_engine.py --dry-run       # same code on the CPU with a tiny shape (a check)
    python benchmarks/gpu/llama8b_engine.py --runs wanda@0.5 --max-blocks 4   # a subset

Runs already in the results JSON (same shape and settings) are skipped, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=False)
DEFAULT_RUNS = "wanda@0.5,sparsegpt@0.5,alps@0.7"


def build(shape: dict, layers: int | None, device: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**shape, "num_hidden_layers": layers or shape["num_hidden_layers"]})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.eval()
    model.config.use_cache = False
    return model


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, CPU, 4 x 32 tokens: checks the script")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"METHOD@LEVEL list (default {DEFAULT_RUNS})")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch", type=int, help="calibration sequences per forward (default: the engine's)")
    parser.add_argument("--resident", choices=["cpu", "gpu"], default="cpu", help="where the model is kept")
    parser.add_argument("--max-blocks", type=int, help="build only this many decoder blocks (a partial timing)")
    parser.add_argument("--out", type=Path, help="results stem (default benchmarks/results/gpu_llama8b)")
    args = parser.parse_args()

    from prunelab.algorithms import get_algorithm
    from prunelab.api import parse_method_spec
    from prunelab.engine import EngineOptions, prune_model
    from prunelab.models.adapters import ModelAdapter
    from prunelab.patterns import Pattern
    from prunelab.record import host_description, package_versions

    if args.dry_run:
        shape, device, samples, seqlen = TINY, "cpu", 4, 32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; use --dry-run to check the script on the CPU")
        shape, device, samples, seqlen = LLAMA3_8B, "cuda", args.samples, args.seqlen
    stem = args.out or RESULTS / ("gpu_llama8b_dryrun" if args.dry_run else "gpu_llama8b")
    stem.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {"rows": []}
    settings = {"shape": shape, "layers": args.max_blocks or shape["num_hidden_layers"], "samples": samples,
                "seqlen": seqlen, "batch": args.batch, "resident": args.resident, "dtype": "bfloat16"}
    rows = [r for r in done["rows"] if r["settings"] == settings]

    started = time.perf_counter()
    model = build(shape, args.max_blocks, device)
    if args.resident == "cpu":
        model.to("cpu")
    build_seconds = time.perf_counter() - started
    adapter = ModelAdapter(model)
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in adapter.blocks.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, shape["vocab_size"], (samples, seqlen), generator=torch.Generator().manual_seed(0))
    print(f"model: {params / 1e9:.2f}B params, bf16, built in {build_seconds:.1f}s; calibration {samples} x {seqlen}",
          flush=True)

    for item in args.runs.split(","):
        spec, level = item.rsplit("@", 1)
        if any(r["run"] == item for r in rows):
            print(f"{item}: done already, skipped", flush=True)
            continue
        name, post = parse_method_spec(spec)
        algorithm = get_algorithm(name)
        pattern = Pattern.parse(None, level, algorithm.default_scope) if ":" in level else \
            Pattern.parse(float(level), None, algorithm.default_scope)
        adapter.blocks.load_state_dict(snapshot)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        info: dict = {}
        start = time.perf_counter()
        reports = prune_model(model, algorithm, pattern, tokens, device=device, progress=True, post=post,
                              options=EngineOptions(batch_size=args.batch), info=info)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        zeros = sum(r.zeros for r in reports)
        total = sum(r.shape[0] * r.shape[1] for r in reports)
        row = {"run": item, "settings": settings, "seconds": seconds, "engine": info, "sparsity": zeros / total,
               "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
               "layers": len(reports)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
        stem.with_suffix(".json").write_text(json.dumps({"rows": rows, "host": host_description(),
                                                         "versions": package_versions(),
                                                         "gpu": torch.cuda.get_device_name(0) if device == "cuda"
                                                         else None}, indent=2) + "\n")

    lines = [f"# Engine on {'a tiny Llama, CPU (dry run)' if args.dry_run else torch.cuda.get_device_name(0)}: "
             f"{params / 1e9:.2f}B-parameter random Llama ({settings['layers']} blocks), bf16, "
             f"{samples} x {seqlen} calibration tokens, model resident on {args.resident}", "",
             "| run | seconds | sparsity | peak GPU memory GiB | batch | activations | phases (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gib = "" if r["peak_gpu_memory_bytes"] is None else f"{r['peak_gpu_memory_bytes'] / 2**30:.1f}"
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["engine"].get("seconds", {}).items())
        lines.append(f"| {r['run']} | {r['seconds']:.1f} | {r['sparsity']:.4f} | {gib} | "
                     f"{r['engine'].get('batch_size')} | {r['engine'].get('activations')} | {phases} |")
    lines += ["", f"Reproduce: `python benchmarks/gpu/llama8b_engine.py{' --dry-run' if args.dry_run else ''}`"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
