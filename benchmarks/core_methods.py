"""Benchmark: methods x levels (or explicit METHOD@LEVEL runs) on the embedded model, next to the dense model.

Protocol: calibration 64 x 512 tokens from C4 (seed 0); WikiText-2 test perplexity at seqlen 512 over the first
128 windows. Every prune and every evaluation runs as its own `prunelab` process, so peak RSS is that of the
prune alone, exactly as a user would see it.

    python benchmarks/core_methods.py            # writes benchmarks/results/core_methods.{md,json}
    python benchmarks/core_methods.py --methods sparsegpt --levels 0.5   # a subset
    python benchmarks/core_methods.py --name solvers --runs alps@0.7,mama@0.6,wanda+dsnot@0.7
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
EVAL = ["--data", "wikitext2", "--split", "test", "--seqlen", "512", "--max-windows", "128"]
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seed", "0"]


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def evaluate(model: str, workdir: Path, tag: str) -> dict:
    out = workdir / f"{tag}-eval.json"
    run([sys.executable, "-m", "prunelab.cli", "eval", model, *EVAL, "--json", str(out), "--quiet"])
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--levels", default="0.5,0.7,2:4")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", help="explicit METHOD@LEVEL list instead of methods x levels, e.g. "
                        "alps@0.7,wanda+dsnot@0.6 (a method may carry +dsnot / +refit)")
    parser.add_argument("--name", default="core_methods", help="results file stem")
    parser.add_argument("--skip-dense", action="store_true", help="do not re-evaluate the dense model")
    args = parser.parse_args()
    if args.runs:
        runs = [tuple(item.rsplit("@", 1)) for item in args.runs.split(",")]
    else:
        runs = [(m, level) for m in args.methods.split(",") for level in args.levels.split(",")]

    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="prunelab-bench-"))
    rows = []
    try:
        if not args.skip_dense:
            dense = evaluate(args.model, workdir, "dense")
            rows.append({"method": "dense", "level": "-", "ppl": dense["ppl"], "prune_seconds": None,
                         "peak_rss_mb": None, "sparsity": dense.get("measured_sparsity")})
        for spec, level in runs:
            method, *steps = spec.split("+")
            refine = next((s for s in steps if s.startswith("dsnot")), None)
            step_flags = (["--refine", refine] if refine else []) + (["--refit"] if "refit" in steps else [])
            tag = f"{spec}-{level.replace(':', 'of')}"
            out = workdir / tag
            pattern = ["--pattern", level] if ":" in level else ["--sparsity", level]
            start = time.perf_counter()
            run([sys.executable, "-m", "prunelab.cli", "prune", "--model", args.model, "--method", method,
                 *pattern, *step_flags, *CALIB, "--out", str(out), "--quiet"])
            wall = time.perf_counter() - start
            record = json.loads((out / "prunelab.json").read_text())
            result = evaluate(str(out), workdir, tag)
            rows.append({"method": spec, "level": level, "ppl": result["ppl"],
                         "prune_seconds": record["prune_seconds"], "process_seconds": wall,
                         "peak_rss_mb": record["peak_rss_bytes"] / 2**20,
                         "sparsity": record["summary"]["sparsity"],
                         "mean_reconstruction_error": record["summary"].get("mean_reconstruction_error")})
            shutil.rmtree(out)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    from prunelab.record import host_description, package_versions
    meta = {"protocol": {"calibration": "c4 train shard-0 sample, 64 x 512, seed 0",
                         "eval": "wikitext2 test, seqlen 512, first 128 windows"},
            "model": args.model, "versions": package_versions(), "host": host_description(),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {args.name}: {args.model}", "",
             f"Calibration: {meta['protocol']['calibration']}. Evaluation: {meta['protocol']['eval']}.",
             f"Host: {meta['host']['cpu_count']} CPUs, torch {meta['versions']['torch']}, {meta['date']}.", "",
             "| method | level | WikiText-2 ppl | prune s | peak RSS MB | sparsity | mean layer rec. error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['method']} | {r['level']} | {fmt(r['ppl'], '.3f')} | {fmt(r['prune_seconds'], '.1f')} | "
                     f"{fmt(r['peak_rss_mb'], '.0f')} | {fmt(r['sparsity'], '.4f')} | "
                     f"{fmt(r.get('mean_reconstruction_error'), '.4f')} |")
    how = f"--runs {args.runs}" if args.runs else f"--methods {args.methods} --levels {args.levels}"
    lines += ["", f"Reproduce: `python benchmarks/core_methods.py {how} --name {args.name}`", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
