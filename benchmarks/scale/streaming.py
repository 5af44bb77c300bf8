"""Models larger than memory: prune a model folder with --offload disk, measure peak RSS and wall time, check the
output (it loads with from_pretrained and has the exact sparsity).

Each prune runs as its own `prunelab prune` process under `/usr/bin/time -v` (maximum resident set size, wall
time) and records its own peak RSS in prunelab.json. The output is then checked: with ``--load full`` it is
loaded with ``AutoModelForCausalLM.from_pretrained`` and every prunable weight's zeros are counted; with
``--load meta`` (a model larger than this machine's memory) the model is built from the output's config on the
meta device, every tensor the index names is compared with it by name, shape and dtype, and the zeros are
counted reading one tensor at a time.

    python benchmarks/scale/make_random_llama.py --preset 1.1b --out /work/big/llama-1.1b
    python benchmarks/scale/streaming.py --model /work/big/llama-1.1b --name scale_1.1b --samples 16 \
        --seqlen 2048 --max-activation-memory 64MB --load full
Results: benchmarks/results/NAME.{json,md} (rows kept: a finished configuration is not rerun).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from measure import cpu_description, git_commit, loadavg, run_measured  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def check_output(out: Path, load: str) -> dict:
    """Load or inspect the pruned folder and count zeros of every prunable weight."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunelab.models.adapters import ModelAdapter
    from prunelab.models.streaming import SafetensorsTensors, skeleton_model

    started = time.perf_counter()
    if load == "full":
        model = AutoModelForCausalLM.from_pretrained(out)
        adapter = ModelAdapter(model)
        counts = [(int((adapter.get_weight(l) == 0).sum()), adapter.get_weight(l).numel())
                  for _, l in adapter.named_prunable_layers()]
        rows_exact = all(int((adapter.get_weight(l) == 0).sum(1).min()) == adapter.get_weight(l).shape[1] // 2
                         for _, l in adapter.named_prunable_layers())
        how = "AutoModelForCausalLM.from_pretrained (all weights in memory)"
    else:
        model = skeleton_model(AutoConfig.from_pretrained(out), torch.float32)
        adapter = ModelAdapter(model)
        tensors = SafetensorsTensors(out)
        state = model.state_dict()
        mismatched = [n for n, t in state.items() if n not in tensors.entries
                      or tensors.entries[n][2] != tuple(t.shape) or tensors.entries[n][1] != t.dtype]
        if mismatched:
            raise SystemExit(f"output does not match its config: {mismatched[:5]}")
        counts, rows_exact = [], True
        for name, _ in adapter.named_prunable_layers():
            w = tensors.read(name + ".weight")
            counts.append((int((w == 0).sum()), w.numel()))
            rows_exact &= int((w == 0).sum(1).min()) == w.shape[1] // 2
            del w
        how = ("config -> model on the meta device; every tensor of the index matches it by name, shape and dtype; "
               "zeros counted one tensor at a time")
    zeros, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"check": how, "prunable_zeros": zeros, "prunable_params": total, "sparsity": zeros / total,
            "every_row_half_zero": rows_exact, "check_seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="model folder (safetensors shards)")
    parser.add_argument("--name", required=True, help="results stem")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-activation-memory", default=None)
    parser.add_argument("--out", type=Path, help="pruned output folder (default: MODEL-pruned beside the model)")
    parser.add_argument("--load", choices=["full", "meta"], default="full")
    parser.add_argument("--keep", action="store_true", help="keep the pruned output (default: delete it after)")
    args = parser.parse_args()

    model = Path(args.model)
    out = args.out or model.with_name(model.name + f"-{args.method}{args.sparsity}")
    results = RESULTS / f"{args.name}.json"
    if results.is_file():
        print(f"{results} exists: this configuration was measured; delete it to rerun")
        return 0
    params = json.loads((model / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    cmd = [sys.executable, "-m", "prunelab.cli", "prune", "--model", str(model), "--method", args.method,
           "--sparsity", args.sparsity, "--offload", "disk", "--calib", "c4", "--calib-samples", str(args.samples),
           "--calib-seqlen", str(args.seqlen), "--device", "cpu", "--out", str(out), "--force", "--quiet"]
    if args.max_activation_memory:
        cmd += ["--max-activation-memory", args.max_activation_memory]
    row = {"model": str(model), "model_bytes": params, "command": " ".join(cmd[2:]).replace("prunelab.cli", "prunelab"),
           "loadavg_start": loadavg(), "commit": git_commit(), "cpu": cpu_description()}
    print("$ /usr/bin/time -v", " ".join(cmd), flush=True)
    proc, measured = run_measured(cmd)
    row["loadavg_end"] = loadavg()
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"prune failed with exit code {proc.returncode}")
    row["time_v"] = measured
    record = json.loads((out / "prunelab.json").read_text())
    row.update({"record_peak_rss_bytes": record["peak_rss_bytes"], "prune_seconds": record["prune_seconds"],
                "load_seconds": record["load_seconds"], "engine": record["engine"], "summary": record["summary"],
                "output_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors"))})
    row["output_check"] = check_output(out, args.load)
    if not args.keep:
        shutil.rmtree(out)
        row["output_deleted"] = True
    RESULTS.mkdir(exist_ok=True)
    results.write_text(json.dumps(row, indent=2) + "\n")
    gib = 2**30
    md = [f"# Streaming prune (--offload disk): {model.name}", "",
          f"`prunelab {row['command'].split(' ', 1)[1]}`", "",
          "| model on disk | peak RSS (/usr/bin/time -v) | peak RSS (prunelab.json) | wall (process) | prune | "
          "activations | sparsity | output check |", "|---|---|---|---|---|---|---|---|",
          f"| {params / 1e9:.2f} GB | {row['time_v']['max_rss_bytes'] / gib:.2f} GiB "
          f"({row['time_v']['max_rss_bytes'] / 1e9:.2f} GB) | {row['record_peak_rss_bytes'] / gib:.2f} GiB | "
          f"{row['time_v']['wall_seconds']:.0f} s | {row['prune_seconds']:.0f} s | {row['engine'].get('activations')} "
          f"({row['engine'].get('activation_bytes', 0) / 2**20:.0f} MiB) | {row['output_check']['sparsity']:.6f} "
          f"(every row half zero: {row['output_check']['every_row_half_zero']}) | {row['output_check']['check']} |",
          "", f"Engine phases (s): {json.dumps(row['engine'].get('seconds'))}. Load average {row['loadavg_start']} -> "
          f"{row['loadavg_end']}. Commit {row['commit']}, {row['cpu']}, CPU kernel "
          f"{row['engine'].get('cpu_linear') or 'aten'}.", "",
          f"Reproduce: `python benchmarks/scale/streaming.py --model {model} --name {args.name} --samples "
          f"{args.samples} --seqlen {args.seqlen}" + (f" --max-activation-memory {args.max_activation_memory}"
                                                      if args.max_activation_memory else "") + f" --load {args.load}`"]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
