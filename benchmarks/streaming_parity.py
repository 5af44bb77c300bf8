"""Streaming vs in-memory on the embedded model: the same prune twice, once with the model loaded (--offload none)
and once streamed block by block from its GGUF (--offload disk), compared tensor by tensor (bit for bit), with
each run's time and peak RSS (its own process, /usr/bin/time -v).

    python benchmarks/streaming_parity.py [--methods wanda,sparsegpt] [--max-activation-memory 64MB]
Results: benchmarks/results/streaming_parity.{json,md}
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import loadavg, run_measured  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seed", "0"]


def prune(method: str, offload: str, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "prunelab.cli", "prune", "--method", method, "--sparsity", "0.5", *CALIB,
           "--device", "cpu", "--offload", offload, *extra, "--out", str(out), "--quiet"]
    start = loadavg()
    proc, measured = run_measured(cmd)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    record = json.loads((out / "prunelab.json").read_text())
    return {"offload": offload, "prune_seconds": record["prune_seconds"], "load_seconds": record["load_seconds"],
            "max_rss_mib": measured["max_rss_bytes"] / 2**20, "record_peak_rss_mib": record["peak_rss_bytes"] / 2**20,
            "engine": record["engine"], "sparsity": record["summary"]["sparsity"], "loadavg": [start, loadavg()]}


def compare(a: Path, b: Path) -> dict:
    from prunelab.models.streaming import SafetensorsTensors

    x, y = SafetensorsTensors(a), SafetensorsTensors(b)
    import torch
    names = sorted(x.entries)
    different = [n for n in names if n not in y.entries or not torch.equal(x.read(n), y.read(n))]
    return {"tensors": len(names), "same_names": set(names) == set(y.entries), "different": different}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--max-activation-memory", help="also spill the activations to disk in the streamed run")
    args = parser.parse_args()
    extra = ["--max-activation-memory", args.max_activation_memory] if args.max_activation_memory else []
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "streaming_parity.json"
    # rows of other methods (or activation settings) measured earlier are kept; each finished method is saved
    rows = json.loads(path.read_text()) if path.is_file() else []
    work = Path(tempfile.mkdtemp(prefix="prunelab-parity-"))
    try:
        for method in args.methods.split(","):
            memory = prune(method, "none", work / f"{method}-mem", [])
            streamed = prune(method, "disk", work / f"{method}-disk", extra)
            row = {"method": method, "max_activation_memory": args.max_activation_memory, "in_memory": memory,
                   "streamed": streamed, "comparison": compare(work / f"{method}-mem", work / f"{method}-disk")}
            key = (method, args.max_activation_memory)
            rows = [r for r in rows if (r["method"], r.get("max_activation_memory")) != key]
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.write_text(json.dumps(rows, indent=2) + "\n")
            render(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(rows: list[dict]) -> None:
    lines = ["# Streaming vs in-memory on the embedded model (SmolLM2-135M, fp32; 64 x 512 C4 tokens)", "",
             "The streamed run reads the GGUF one block at a time (dequantizing each tensor) and writes each pruned "
             "block to its own shard; the in-memory run loads the dequantized model. Every saved tensor compared. "
             "Each prune is its own process (max RSS from `/usr/bin/time -v`).", "",
             "| method | tensors | bit-identical | prune s (memory / streamed) | max RSS MiB (memory / streamed) | "
             "streamed activations |", "|---|---|---|---|---|---|"]
    for r in rows:
        m, s, c = r["in_memory"], r["streamed"], r["comparison"]
        same = "yes" if c["same_names"] and not c["different"] else "NO: " + ", ".join(c["different"][:3])
        spill = f" (--max-activation-memory {r['max_activation_memory']})" if r.get("max_activation_memory") else ""
        lines.append(f"| {r['method']} | {c['tensors']} | {same} | {m['prune_seconds']:.1f} / {s['prune_seconds']:.1f} | "
                     f"{m['max_rss_mib']:.0f} / {s['max_rss_mib']:.0f} | {s['engine'].get('activations')}{spill} |")
    lines += ["", "Load averages per run are in the JSON (times are comparable within a row only).", "",
              "Reproduce: `python benchmarks/streaming_parity.py [--methods wanda,sparsegpt] [--max-activation-memory 64MB]`"]
    (RESULTS / "streaming_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
