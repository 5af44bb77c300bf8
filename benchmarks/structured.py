"""Benchmark: structured pruning quality on the embedded model (resumable).

Protocol of benchmarks/core_methods.py: calibration 64 x 512 tokens of C4 (seed 0); WikiText-2 test perplexity
at seqlen 512 over the first 128 windows (8 per forward). Each prune and each evaluation of the saved (stock-loadable) folder
runs as its own `prunelab` process. Finished rows are kept in the JSON and skipped on a rerun, so an interrupted
benchmark continues where it stopped.

    python benchmarks/structured.py                      # the quality table: every criterion with and without
                                                         # --refit at 10/20/30/50%, and depth 2/4/6/8 blocks
    python benchmarks/structured.py --runs obs+refit@0.2 --name structured_extra
    python benchmarks/structured.py --runs "wanda@0.3:channels" --name structured_extra  # other structure

A run is METHOD[+refit][+nobias][+adaptive][+round64]@LEVEL[:STRUCTURE]; LEVEL is a fraction of the decoder
blocks' parameters, or for blocks "Nb" (N whole blocks). The default structure is channels,heads.
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
# 8 windows per forward: the same perplexity up to float rounding (~1e-6 relative), 2-3x faster than one window
# per forward on 2 busy cores.
EVAL = ["--data", "wikitext2", "--split", "test", "--seqlen", "512", "--max-windows", "128", "--batch-size", "8"]
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seed", "0"]
CRITERIA = ("magnitude", "wanda", "flap", "obs")
LEVELS = ("0.1", "0.2", "0.3", "0.5")
DEPTHS = ("2b", "4b", "6b", "8b")
N_BLOCKS = 30  # SmolLM2-135M


def default_runs() -> list[str]:
    runs = [f"{c}{step}@{level}" for level in LEVELS for c in CRITERIA for step in ("", "+refit")]
    return runs + [f"block-influence@{d}:blocks" for d in DEPTHS]


def parse_run(label: str) -> tuple[list[str], str]:
    """A run label -> (prune flags, structure)."""
    spec, _, rest = label.partition("@")
    level, _, structure = rest.partition(":")
    method, *steps = spec.split("+")
    structure = structure or ("blocks" if method == "block-influence" else "channels,heads")
    sparsity = str(int(level[:-1]) / N_BLOCKS) if level.endswith("b") else level
    flags = ["--method", method, "--structure", structure, "--sparsity", sparsity]
    known = {"refit": ["--refit"], "nobias": ["--no-bias-correction"], "bias": ["--bias-correction"],
             "adaptive": ["--allocation", "adaptive"], "round64": ["--opt", "round_to=64"],
             "round8": ["--opt", "round_to=8"]}
    for step in steps:
        if step.startswith("damp"):
            flags += ["--opt", f"dampening={step[4:]}"]
        elif step in known:
            flags += known[step]
        else:
            raise ValueError(f"unknown step {step!r} in {label!r}")
    return flags, structure


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", help="comma list of run labels (default: the full quality table)")
    parser.add_argument("--name", default="structured", help="results file stem under benchmarks/results/")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    runs = args.runs.split(",") if args.runs else default_runs()
    for label in runs:
        parse_run(label)  # fail on a typo before any work

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    rows = data["rows"]
    workdir = Path(tempfile.mkdtemp(prefix="prunelab-structured-"))
    try:
        if "dense" not in rows:
            out = workdir / "dense-eval.json"
            run([sys.executable, "-m", "prunelab.cli", "eval", args.model, *EVAL, "--json", str(out), "--quiet"])
            rows["dense"] = {"ppl": json.loads(out.read_text())["ppl"]}
            save(path, data, args)
        for label in runs:
            if label in rows:
                continue
            flags, structure = parse_run(label)
            out = workdir / "model"
            load_start = loadavg()
            start = time.perf_counter()
            run([sys.executable, "-m", "prunelab.cli", "prune", "--model", args.model, *flags, *CALIB,
                 "--out", str(out), "--force", "--quiet"])
            wall = time.perf_counter() - start
            record = json.loads((out / "prunelab.json").read_text())
            ev = workdir / "eval.json"
            run([sys.executable, "-m", "prunelab.cli", "eval", str(out), *EVAL, "--json", str(ev), "--quiet"])
            s, st = record["summary"], record["structured"]
            rows[label] = {
                "structure": structure, "ppl": json.loads(ev.read_text())["ppl"],
                "target": float(flags[flags.index("--sparsity") + 1]), "achieved": s["achieved_sparsity"],
                "params": s["total_params_after"], "block_params": s["block_params_after"],
                "mean_reconstruction_error": s.get("mean_reconstruction_error"),
                "mean_error_before_refit": mean([r.get("error_before_refit") for r in record["layers"]]),
                "removed_blocks": st.get("removed_blocks"), "config": st.get("config"),
                "prune_seconds": record["prune_seconds"], "process_seconds": wall,
                "peak_rss_mb": record["peak_rss_bytes"] / 2**20, "loadavg": [load_start, loadavg()],
            }
            shutil.rmtree(out)
            print(json.dumps({label: rows[label]["ppl"]}), flush=True)
            save(path, data, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    save(path, data, args)
    return 0


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def save(path: Path, data: dict, args) -> None:
    from prunelab.record import host_description, package_versions

    data["meta"] = {"protocol": {"calibration": "c4 train shard-0 sample, 64 x 512, seed 0",
                                 "eval": "wikitext2 test, seqlen 512, first 128 windows, 8 per forward"},
                    "model": args.model, "versions": package_versions(), "host": host_description(),
                    "date": time.strftime("%Y-%m-%d %H:%M")}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    path.with_suffix(".md").write_text(render(data, args.name))


def render(data: dict, name: str) -> str:
    rows = data["rows"]
    dense = rows.get("dense", {}).get("ppl")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"# {name}: structured pruning of {data['meta']['model']}", "",
             f"Calibration: {data['meta']['protocol']['calibration']}. Evaluation: {data['meta']['protocol']['eval']} "
             f"(dense: {fmt(dense, '.2f')}). Each saved model is reloaded with stock transformers for evaluation.",
             "Level = fraction of the decoder blocks' parameters removed (target; achieved in its own column).", ""]
    widths = [(k, v) for k, v in rows.items() if k != "dense" and v["structure"] != "blocks"]
    levels = sorted({k.split("@")[1] for k, _ in widths})
    order = [f"{c}{step}" for c in CRITERIA for step in ("", "+refit")]
    methods = sorted(dict.fromkeys(k.split("@")[0] for k, _ in widths),
                     key=lambda m: order.index(m) if m in order else len(order))
    if widths:
        lines += ["## Channels and heads: WikiText-2 perplexity", "",
                  "| method | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
        for m in methods:
            cells = [fmt(rows.get(f"{m}@{lv}", {}).get("ppl"), ".2f") for lv in levels]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += acceptance(rows, methods, levels)
    depth = [(k, v) for k, v in rows.items() if k != "dense" and v["structure"] == "blocks"]
    if depth:
        lines += ["## Depth (whole blocks removed): WikiText-2 perplexity", "",
                  "| run | blocks removed | fraction removed | ppl |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['removed_blocks']} | {v['achieved']:.4f} | {v['ppl']:.2f} |" for k, v in depth]
        lines.append("")
    lines += ["## Every run", "", "| run | structure | target | achieved | params (M) | ppl | mean rec. error "
              "(before refit) | prune s | loadavg start/end |", "|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        if k == "dense":
            continue
        err = fmt(r.get("mean_reconstruction_error"), ".4f")
        if r.get("mean_error_before_refit") is not None:
            err += f" ({r['mean_error_before_refit']:.4f})"
        extra = f" blocks {r['removed_blocks']}" if r.get("removed_blocks") else ""
        lines.append(f"| {k}{extra} | {r['structure']} | {r['target']:.4f} | {r['achieved']:.4f} | "
                     f"{r['params'] / 1e6:.2f} | {r['ppl']:.2f} | {err} | {r['prune_seconds']:.0f} | "
                     f"{'/'.join(r['loadavg'])} |")
    labels = [k for k in rows if k != "dense"]
    how = "" if set(labels) == set(default_runs()) else f" --runs {','.join(labels)}"
    lines += ["", f"Reproduce: `python benchmarks/structured.py --name {name}{how}` "
              f"({data['meta']['date']}, torch {data['meta']['versions']['torch']}).", ""]
    return "\n".join(lines)


def acceptance(rows: dict, methods: list[str], levels: list[str]) -> list[str]:
    """Issue 15's criteria, computed from the rows: --refit improves every criterion; the best structured method
    vs flap (>= 15% lower at 20%, >= 25% lower at 50%)."""
    ppl = lambda label: rows.get(label, {}).get("ppl")  # noqa: E731
    lines = ["Refit: perplexity with `--refit` / without, per criterion and level (< 1 = refit improves).", "",
             "| criterion | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for m in [m for m in methods if "+" not in m]:
        cells = []
        for lv in levels:
            alone, refit = ppl(f"{m}@{lv}"), ppl(f"{m}+refit@{lv}")
            cells.append("-" if None in (alone, refit) else f"{refit / alone:.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Best method vs flap (target: >= 15% lower at 0.2, >= 25% lower at 0.5).", "",
              "| level | flap | best | best ppl | lower than flap by |", "|---|---|---|---|---|"]
    for lv in levels:
        found = {m: value for m in methods if (value := ppl(f"{m}@{lv}")) is not None}
        if "flap" not in found:
            continue
        best = min(found, key=found.get)
        lines.append(f"| {lv} | {found['flap']:.2f} | {best} | {found[best]:.2f} | "
                     f"{1 - found[best] / found['flap']:.1%} |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
