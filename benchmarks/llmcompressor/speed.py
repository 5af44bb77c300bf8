"""prunelab vs llm-compressor, side by side in one run: pruning time, peak memory and perplexity on the CPU.

Protocol of benchmarks/core_methods.py: the embedded model (fp32), 64 x 512 C4 calibration tokens (seed 0, the very
same ids for both tools), WikiText-2 test perplexity at seqlen 512 over the first 128 windows (`prunelab eval`
for every output). Each prune is its own process under `/usr/bin/time -v` (wall time, maximum RSS); the tools'
own timers are prunelab.json's prune_seconds and llm-compressor's seconds_oneshot (the oneshot call). The runs
alternate tools so slow drift of the machine's load hits both; the load average is recorded around each.
`ours-sparsegpt-stream` is the same prune streamed from the GGUF block by block (`--offload disk`, the path for
models larger than memory): its own time and peak-RSS ratios, and its perplexity against the in-memory run's.

    bash benchmarks/llmcompressor/compare.sh   # once: llm-compressor's venv and the exported inputs in $WORK
    python benchmarks/llmcompressor/speed.py [--runs ours-sparsegpt,llmc-sparsegpt,...]
Results: benchmarks/results/speed_vs_llmcompressor.{json,md}; finished runs are kept and skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from measure import cpu_description, git_commit, loadavg, run_measured, write_markdown  # noqa: E402
from baseline import ROOT, WORK, evaluate, exported_model, llmc_prune_command, venv_python  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seed", "0"]
RUNS = {  # name -> (tool, method, extra prunelab flags)
    "ours-sparsegpt": ("prunelab", "sparsegpt", []),
    "llmc-sparsegpt": ("llmc", "sparsegpt", []),
    "ours-wanda": ("prunelab", "wanda", []),
    "llmc-wanda": ("llmc", "wanda", []),
    "ours-sparsegpt-bf16": ("prunelab", "sparsegpt", ["--compute-dtype", "bfloat16"]),
    "ours-wanda-bf16": ("prunelab", "wanda", ["--compute-dtype", "bfloat16"]),
    "ours-sparsegpt-b8": ("prunelab", "sparsegpt", ["--calib-batch-size", "8"]),  # 8 sequences per block forward
    "ours-wanda-b8": ("prunelab", "wanda", ["--calib-batch-size", "8"]),
    # streamed from the GGUF one block at a time, pruned blocks written as they are done (the large-model path)
    "ours-sparsegpt-stream": ("prunelab", "sparsegpt", ["--offload", "disk"]),
}


def run_one(name: str, work: Path) -> dict:
    tool, method, extra = RUNS[name]
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    if tool == "prunelab":
        # the run's own flags last, so they override the defaults (argparse keeps the last value)
        cmd = [sys.executable, "-m", "prunelab.cli", "prune", "--method", method, "--sparsity", "0.5", *CALIB,
               "--device", "cpu", "--offload", "none", *extra, "--out", str(out), "--quiet"]
    else:
        cmd = llmc_prune_command(exported_model(), work / "calib.pt", method, out)
    row = {"run": name, "tool": tool, "method": method, "extra": extra, "host": cpu_description(),
           "commit": git_commit(), "loadavg_start": loadavg()}
    print("$", " ".join(cmd), flush=True)
    proc, measured = run_measured(cmd)
    row["loadavg_end"] = loadavg()
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    row.update({"max_rss_mib": measured["max_rss_bytes"] / 2**20 if measured["max_rss_bytes"] else None,
                "wall_seconds": measured["wall_seconds"]})
    if tool == "prunelab":
        record = json.loads((out / "prunelab.json").read_text())
        row.update({"tool_seconds": record["prune_seconds"], "sparsity": record["summary"]["sparsity"],
                    "engine": record["engine"]})
    else:
        record = json.loads((out / "llmc_run.json").read_text())
        row.update({"tool_seconds": record["seconds_oneshot"], "sparsity": record["zero_fraction_targeted"]})
    row["ppl"] = evaluate(out, work / f"{name}-eval.json")
    shutil.rmtree(out, ignore_errors=True)
    return row


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--name", default="speed_vs_llmcompressor")
    args = parser.parse_args()
    venv_python()  # fails early, saying how to make it
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    rows = {r["run"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    for name in args.runs.split(","):
        if name in rows:
            print(f"{name}: measured already, skipped")
            continue
        rows[name] = run_one(name, WORK)
        print(json.dumps(rows[name]), flush=True)
        path.write_text(json.dumps({"rows": list(rows.values())}, indent=2) + "\n")

    def get(name, key):
        return rows.get(name, {}).get(key)

    lines = ["# prunelab vs llm-compressor on 2 CPU cores (one run, alternating tools)", "",
             "Embedded model fp32, 64 x 512 C4 calibration tokens (seed 0, same ids), 50% unstructured; WikiText-2 "
             "test ppl, seqlen 512, first 128 windows (`prunelab eval` for both).", "",
             "Host: " + ", ".join(sorted({r.get("host") or "not recorded" for r in rows.values()})) + "; prunelab "
             "commit: " + ", ".join(sorted({r.get("commit") or "not recorded" for r in rows.values()})) + ".", "",
             "| run | tool timer s | process wall s | max RSS MiB | ppl | sparsity | load avg start -> end |",
             "|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['run']} | {r['tool_seconds']:.1f} | {r['wall_seconds']:.0f} | {r['max_rss_mib']:.0f} | "
                     f"{r['ppl']:.3f} | {r['sparsity']:.4f} | {r['loadavg_start']} -> {r['loadavg_end']} |")
    checks = [
        ("SparseGPT fp32 time (tool timer) vs llm-compressor", ratio(get("ours-sparsegpt", "tool_seconds"),
                                                                   get("llmc-sparsegpt", "tool_seconds")), 0.65),
        ("SparseGPT fp32 peak RSS vs llm-compressor", ratio(get("ours-sparsegpt", "max_rss_mib"),
                                                          get("llmc-sparsegpt", "max_rss_mib")), 0.8),
        ("SparseGPT fp32 streamed (--offload disk) time vs llm-compressor",
         ratio(get("ours-sparsegpt-stream", "tool_seconds"), get("llmc-sparsegpt", "tool_seconds")), 0.65),
        ("SparseGPT fp32 streamed (--offload disk) peak RSS vs llm-compressor",
         ratio(get("ours-sparsegpt-stream", "max_rss_mib"), get("llmc-sparsegpt", "max_rss_mib")), 0.8),
        ("Wanda time (tool timer) vs llm-compressor's Wanda", ratio(get("ours-wanda", "tool_seconds"),
                                                                   get("llmc-wanda", "tool_seconds")), 0.5),
        ("SparseGPT bf16 compute time vs llm-compressor's fp32", ratio(get("ours-sparsegpt-bf16", "tool_seconds"),
                                                                      get("llmc-sparsegpt", "tool_seconds")), 0.4),
        # not the fp32 target: the bf16 forwards against llm-compressor's fp32 Wanda, for reference
        ("Wanda bf16 compute time vs llm-compressor's fp32 Wanda", ratio(get("ours-wanda-bf16", "tool_seconds"),
                                                                        get("llmc-wanda", "tool_seconds")), 0.5),
    ]
    phases = [(r["run"], r["engine"]) for r in rows.values() if r.get("engine")]
    if phases:  # prunelab's own phase timers (stats_accumulate is part of stats_forward)
        lines += ["", "Where prunelab's time goes (engine phase timers, seconds; XᵀX/statistics accumulation is inside "
                  "the stats forwards):", "", "| run | calibration batch | stats forwards | of which accumulation | "
                  "solve | output forwards |", "|---|---|---|---|---|---|"]
        for name, engine in phases:
            sec = engine.get("seconds", {})
            lines.append(f"| {name} | {engine.get('batch_size')} | {sec.get('stats_forward', 0):.1f} | "
                         f"{sec.get('stats_accumulate', 0):.1f} | {sec.get('solve', 0):.1f} | "
                         f"{sec.get('output_forward', 0):.1f} |")
    lines += ["", "| target | measured ratio | target | met |", "|---|---|---|---|"]
    for label, value, target in checks:
        lines.append(f"| {label} | {'-' if value is None else f'{value:.3f}'} | <= {target} | "
                     f"{'-' if value is None else ('yes' if value <= target else 'NO')} |")
    before = {(r["method"], r["level"]): r["ppl"] for r in
              json.loads((RESULTS / "core_methods.json").read_text())["rows"]}  # prunelab before the engine work
    ppl = [("SparseGPT fp32 ppl vs prunelab's earlier figure (core_methods.json; within 0.1%)",
            get("ours-sparsegpt", "ppl"), before.get(("sparsegpt", "0.5")), 0.001),
           ("Wanda ppl vs prunelab's earlier figure (core_methods.json; within 0.1%)",
            get("ours-wanda", "ppl"), before.get(("wanda", "0.5")), 0.001),
           ("SparseGPT streamed ppl vs in memory (the same weights expected)", get("ours-sparsegpt-stream", "ppl"),
            get("ours-sparsegpt", "ppl"), 0.0),
           ("SparseGPT fp32 ppl vs llm-compressor's (for reference)", get("ours-sparsegpt", "ppl"),
            get("llmc-sparsegpt", "ppl"), 0.01),
           ("SparseGPT bf16 ppl vs prunelab fp32 (within 1%)", get("ours-sparsegpt-bf16", "ppl"),
            get("ours-sparsegpt", "ppl"), 0.01),
           ("Wanda bf16 ppl vs prunelab fp32 Wanda (within 1%)", get("ours-wanda-bf16", "ppl"),
            get("ours-wanda", "ppl"), 0.01)]
    for label, a, b, tol in ppl:
        if a is not None and b is not None:
            rel = abs(a - b) / b
            lines.append(f"| {label} | {100 * rel:.3f}% | <= {100 * tol:g}% | {'yes' if rel <= tol else 'NO'} |")
    lines += ["", f"Reproduce: `python benchmarks/llmcompressor/speed.py` (after `bash benchmarks/llmcompressor/compare.sh`"
              " has set up the llm-compressor venv)"]
    write_markdown(RESULTS / f"{args.name}.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
