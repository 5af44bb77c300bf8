"""How much float32 rounding alone moves a pruned model's perplexity (the floor under "unchanged within 0.1%").

SparseGPT 50% on the protocol of benchmarks/core_methods.py (the embedded model, 64 x 512 C4 tokens seed 0,
WikiText-2 test seqlen 512, first 128 windows), run several times with the *same* calibration sequences fed in a
different order. In exact arithmetic every run is the same: XᵀX is a sum over sequences and each sequence's
activations depend on that sequence alone. In float32 the sums round differently, near-tied saliencies flip, and
the masks and perplexity move. The spread across orders is the rounding noise of the method itself, on one engine.

The same with another thread count shows whether the split of the matmuls' work changes anything. With
`--tool llmcompressor` the same orders go through llm-compressor's SparseGPT (its venv and exported inputs in
$WORK, see benchmarks/llmcompressor/compare.sh), so the two tools' perplexities can be compared against their
own noise rather than one run each.

    python benchmarks/rounding_noise.py [--orders identity,reversed,perm1] [--threads 1] [--tool llmcompressor]
Results: benchmarks/results/rounding_noise.{json,md}; finished (order, threads) rows are kept and skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("WORK", "/tmp/llmc"))
EVAL = ["--data", "wikitext2", "--split", "test", "--seqlen", "512", "--max-windows", "128"]


def order_of(name: str, n: int) -> torch.Tensor:
    if name == "identity":
        return torch.arange(n)
    if name == "reversed":
        return torch.arange(n - 1, -1, -1)
    if name.startswith("perm"):
        return torch.randperm(n, generator=torch.Generator().manual_seed(int(name[4:])))
    raise SystemExit(f"unknown order {name!r}: identity, reversed or permN")


def run_order(name: str) -> dict:
    from prunelab.algorithms import get_algorithm
    from prunelab.api import calibration_data, evaluate
    from prunelab.config import CalibrationConfig
    from prunelab.engine import prune_model
    from prunelab.models.loading import load_model
    from prunelab.patterns import Pattern

    model, tokenizer, _ = load_model("smollm2-135m")
    ids, info = calibration_data(tokenizer, CalibrationConfig("c4", "train", 64, 512, 0))
    order = order_of(name, ids.shape[0])
    started = time.perf_counter()
    prune_model(model, get_algorithm("sparsegpt"), Pattern(0.5), ids[order], progress=True)
    seconds = time.perf_counter() - started
    ev = evaluate(model, tokenizer=tokenizer, data="wikitext2", seqlen=512, max_windows=128, progress=True)
    return {"tool": "prunelab", "order": name, "first_rows": order[:4].tolist(),
            "calibration_tokens_sha256": info["tokens_sha256"], "ppl": ev["ppl"], "prune_seconds": seconds,
            "threads": torch.get_num_threads(), "cpu": _cpu()}


def run_order_llmcompressor(name: str) -> dict:
    """The same order through llm-compressor's SparseGPT (run_llmc.py in its venv), evaluated by `prunelab eval`."""
    from prunelab.api import calibration_data
    from prunelab.config import CalibrationConfig
    from prunelab.models.loading import load_model

    if not (WORK / "venv/bin/python").exists():
        raise SystemExit(f"no llm-compressor venv in {WORK}: run benchmarks/llmcompressor/compare.sh once (or set WORK)")
    folder = subprocess.run([sys.executable, str(ROOT / "benchmarks/llmcompressor/export_inputs.py"), str(WORK)],
                            check=True, capture_output=True, text=True).stdout.splitlines()[0]
    _, tokenizer, _ = load_model("smollm2-135m")
    ids, info = calibration_data(tokenizer, CalibrationConfig("c4", "train", 64, 512, 0))
    order = order_of(name, ids.shape[0])
    calib, out, ev = WORK / f"calib-{name}.pt", WORK / f"out-noise-{name}", WORK / f"noise-{name}-eval.json"
    torch.save(ids[order].clone(), calib)
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([str(WORK / "venv/bin/python"), str(ROOT / "benchmarks/llmcompressor/run_llmc.py"), "--model",
                    folder, "--calib", str(calib), "--method", "sparsegpt", "--sparsity", "0.5", "--mask-structure",
                    "0:0", "--threads", str(torch.get_num_threads()), "--out", str(out)], check=True,
                   capture_output=True)
    seconds = json.loads((out / "llmc_run.json").read_text())["seconds_oneshot"]
    subprocess.run([sys.executable, "-m", "prunelab.cli", "eval", str(out), *EVAL, "--json", str(ev), "--quiet"],
                   check=True, capture_output=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"tool": "llmcompressor", "order": name, "first_rows": order[:4].tolist(),
            "calibration_tokens_sha256": info["tokens_sha256"], "ppl": json.loads(ev.read_text())["ppl"],
            "prune_seconds": seconds, "threads": torch.get_num_threads(), "cpu": _cpu()}


def _cpu() -> str:
    """The CPU's model and vector extensions: another instruction set rounds the matmuls differently."""
    from prunelab.record import host_description
    host = host_description()
    return f"{host['cpu_model']} ({torch.backends.cpu.get_cpu_capability()})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="identity,reversed,perm1")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--tool", choices=["prunelab", "llmcompressor"], default="prunelab")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "rounding_noise.json"
    rows = {_key(r): r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    for name in args.orders.split(","):
        if _key({"tool": args.tool, "order": name, "threads": args.threads}) not in rows:
            row = run_order(name) if args.tool == "prunelab" else run_order_llmcompressor(name)
            rows[_key(row)] = row
            path.write_text(json.dumps({"rows": list(rows.values())}, indent=1))
    ref = json.loads((RESULTS / "core_methods.json").read_text())
    lines = ["# Rounding noise: SparseGPT 50% perplexity when only the order of the calibration sequences, or the "
             "number of threads, changes", "",
             "Same 64 x 512 C4 sequences (seed 0), same engine; WikiText-2 test, seqlen 512, first 128 windows.", "",
             "| tool | order | first rows | threads | CPU | WikiText-2 ppl | prune s |",
             "|---|---|---|---|---|---|---|"]
    ordered = sorted(rows.values(), key=lambda r: (_tool(r), r["threads"], r["order"]))
    lines += [f"| {_tool(r)} | {r['order']} | {r['first_rows']} | {r['threads']} | {r.get('cpu', '?')} | "
              f"{r['ppl']:.3f} | {r['prune_seconds']:.0f} |"
              for r in ordered]
    lines.append("")
    for tool in sorted({_tool(r) for r in ordered}):
        for threads in sorted({r["threads"] for r in ordered if _tool(r) == tool}):
            ppls = [r["ppl"] for r in ordered if r["threads"] == threads and _tool(r) == tool]
            if len(ppls) > 1:
                lines.append(f"- {tool}, {threads} thread(s): mean {statistics.mean(ppls):.3f}, spread (max - min) / "
                             f"mean **{_spread(ppls):.2%}** over {len(ppls)} orders.")
        ppls = [r["ppl"] for r in ordered if _tool(r) == tool]
        lines.append(f"- {tool}, all runs: mean {statistics.mean(ppls):.3f}, spread **{_spread(ppls):.2%}** over "
                     f"{len(ppls)} runs.")
    lines += _paired(ordered)
    lines += [
              f"- Reference figure in core_methods.json (an earlier engine on another host, 2 threads): "
              f"{_reference(ref):.3f}.", "",
              "Reproduce: `python benchmarks/rounding_noise.py --threads N [--tool llmcompressor]` (one row per tool, "
              "order and thread count; finished rows are kept)"]
    (RESULTS / "rounding_noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _paired(rows: list[dict]) -> list[str]:
    """The two tools on the orders both ran (an order run on several thread counts counted once: on one host they
    gave the same bits)."""
    by_tool: dict[str, dict[str, float]] = {}
    for r in rows:
        by_tool.setdefault(_tool(r), {}).setdefault(r["order"], r["ppl"])
    ours, theirs = by_tool.get("prunelab", {}), by_tool.get("llmcompressor", {})
    common = [o for o in ours if o in theirs]
    if len(common) < 2:
        return []
    a, b = [ours[o] for o in common], [theirs[o] for o in common]
    return [f"- Same {len(common)} orders ({', '.join(common)}): prunelab mean {statistics.mean(a):.3f} (spread "
            f"{_spread(a):.2%}), llm-compressor mean {statistics.mean(b):.3f} (spread {_spread(b):.2%}); prunelab's "
            f"mean is {statistics.mean(a) / statistics.mean(b) - 1:+.2%} from llm-compressor's, per order "
            f"{min(x / y - 1 for x, y in zip(a, b)):+.2%} to {max(x / y - 1 for x, y in zip(a, b)):+.2%}."]


def _tool(row: dict) -> str:
    return row.get("tool", "prunelab")  # rows from before --tool existed are prunelab's


def _key(row: dict) -> str:
    return f"{_tool(row)}:{row['order']}@{row['threads']}"


def _spread(ppls: list[float]) -> float:
    return (max(ppls) - min(ppls)) / statistics.mean(ppls)


def _reference(ref: dict) -> float:
    for row in ref.get("rows", ref if isinstance(ref, list) else []):
        if row.get("method") == "sparsegpt" and abs(float(row.get("level", row.get("sparsity", 0))) - 0.5) < 1e-9:
            return float(row["ppl"])
    return float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
