"""Streaming vs in-memory on the embedded model: the same prune twice, once with the model loaded (--offload none)
and once streamed block by block from its GGUF (--offload disk), compared tensor by tensor (bit for bit), with
each run's time and peak RSS (its own process, /usr/bin/time -v).

    python benchmarks/streaming_parity.py [--methods wanda,sparsegpt] [--max-activation-memory 64MB]
Results: benchmarks/results/streaming_parity.{json,md}
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seed", "0"]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def prune(method: str, offload: str, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "prunelab.cli", "prune", "--method", method, "--sparsity", "0.5", *CALIB,
           "--device", "cpu", "--offload", offload, *extra, "--out", str(out), "--quiet"]
    start = loadavg()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    record = json.loads((out / "prunelab.json").read_text())
    return {"offload": offload, "prune_seconds": record["prune_seconds"], "load_seconds": record["load_seconds"],
            "max_rss_mib": rss / 1024, "record_peak_rss_mib": record["peak_rss_bytes"] / 2**20,
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
    rows = []
    work = Path(tempfile.mkdtemp(prefix="prunelab-parity-"))
    try:
        for method in args.methods.split(","):
            memory = prune(method, "none", work / f"{method}-mem", [])
            streamed = prune(method, "disk", work / f"{method}-disk", extra)
            rows.append({"method": method, "in_memory": memory, "streamed": streamed,
                         "comparison": compare(work / f"{method}-mem", work / f"{method}-disk")})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming_parity.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Streaming vs in-memory on the embedded model (SmolLM2-135M, fp32; 64 x 512 C4 tokens)", "",
             "The streamed run reads the GGUF one block at a time (dequantizing each tensor) and writes each pruned "
             "block to its own shard; the in-memory run loads the dequantized model. Every saved tensor compared.", "",
             "| method | tensors | bit-identical | prune s (memory / streamed) | max RSS MiB (memory / streamed) | "
             "streamed activations |", "|---|---|---|---|---|---|"]
    for r in rows:
        m, s, c = r["in_memory"], r["streamed"], r["comparison"]
        lines.append(f"| {r['method']} | {c['tensors']} | {'yes' if c['same_names'] and not c['different'] else 'NO: ' + ', '.join(c['different'][:3])} | "
                     f"{m['prune_seconds']:.1f} / {s['prune_seconds']:.1f} | {m['max_rss_mib']:.0f} / {s['max_rss_mib']:.0f} | "
                     f"{s['engine'].get('activations')} |")
    lines += ["", "Load averages per run are in the JSON.", "",
              "Reproduce: `python benchmarks/streaming_parity.py" + (f" --max-activation-memory {args.max_activation_memory}"
                                                                       if args.max_activation_memory else "") + "`"]
    (RESULTS / "streaming_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
