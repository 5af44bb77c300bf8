"""The speed table: dense / unstructured 50% (dense kernel, CSR, auto) / 2:4 / structured, on the embedded model.

Each row is one ``prunelab speed MODEL --baseline smollm2-135m`` invocation at the acceptance settings (2 threads,
batch 1, prompt 512, 128 new tokens, 5 repeats after a warm-up, each model in its own process), so every row has
its own dense baseline measured next to it. The pruned models are made first (SparseGPT 50% and 2:4, calibration
64 x 512 of C4, seed 0, as benchmarks/core_methods.py; structured rows only when ``prunelab prune`` has
``--structure``). Rows are kept as JSON files under --work; a rerun skips finished ones, and rows not measured in this --work
keep their figures from the results file.

    flock /tmp/prunelab-heavy.lock python benchmarks/speed_table.py [--work /work/runs-formats/speed]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BASELINE = "smollm2-135m"
# name -> prune arguments (None: the embedded model itself)
MODELS = {
    "dense": None,
    "sparsegpt-50": ["--method", "sparsegpt", "--sparsity", "0.5"],
    "sparsegpt-2of4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "structured-30": ["--method", "{structured_method}", "--structure", "channels,heads", "--sparsity", "0.3"],
    "structured-50": ["--method", "{structured_method}", "--structure", "channels,heads", "--sparsity", "0.5"],
    "structured-30-r64": ["--method", "{structured_method}", "--structure", "channels,heads", "--sparsity", "0.3",
                          "--opt", "round_to=64"],
    "structured-50-r64": ["--method", "{structured_method}", "--structure", "channels,heads", "--sparsity", "0.5",
                          "--opt", "round_to=64"],
    "depth-4": ["--method", "{depth_method}", "--structure", "blocks", "--sparsity", "{depth4}"],
    "depth-8": ["--method", "{depth_method}", "--structure", "blocks", "--sparsity", "{depth8}"],
}
# row -> (model, kernel)
ROWS = {
    "dense": ("dense", "dense"),
    "unstructured 50% (dense kernel)": ("sparsegpt-50", "dense"),
    "unstructured 50% (csr)": ("sparsegpt-50", "csr"),
    "unstructured 50% (auto)": ("sparsegpt-50", "auto"),
    "2:4 (dense kernel)": ("sparsegpt-2of4", "dense"),
    "2:4 (csr)": ("sparsegpt-2of4", "csr"),
    "channels+heads 30%": ("structured-30", "dense"),
    "channels+heads 50%": ("structured-50", "dense"),
    "channels+heads 30% (MLP width a multiple of 64)": ("structured-30-r64", "dense"),
    "channels+heads 50% (MLP width a multiple of 64)": ("structured-50-r64", "dense"),
    "depth 4 blocks": ("depth-4", "dense"),
    "depth 8 blocks": ("depth-8", "dense"),
}
SETTINGS = ["--threads", "2", "--batch", "1", "--prompt-len", "512", "--new-tokens", "128", "--repeats", "5"]


def row_file(rows_dir: Path, row: str) -> Path:
    name = row.replace(" ", "_").replace("%", "pct").replace(":", "of").replace("(", "").replace(")", "")
    return rows_dir / (name.replace("+", "_") + ".json")


def has_structure() -> bool:
    help_text = subprocess.run([sys.executable, "-m", "prunelab.cli", "prune", "--help"], capture_output=True,
                               text=True).stdout
    return "--structure" in help_text


def make_model(name: str, work: Path, fill: dict) -> str:
    if MODELS[name] is None:
        return BASELINE
    out = work / "models" / name
    if (out / "prunelab.json").is_file():
        return str(out)
    args = [a.format(**fill) for a in MODELS[name]]
    cmd = [sys.executable, "-m", "prunelab.cli", "prune", *args, "--device", "cpu", "--out", str(out), "--force",
           "--quiet"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return str(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/work/runs-formats/speed")
    ap.add_argument("--rows", help="comma list of row names (default: all that can be made)")
    ap.add_argument("--structured-method", default="magnitude", help="criterion for the channels+heads rows "
                    "(speed depends on the widths, not on which units were removed)")
    ap.add_argument("--depth-method", default="block-influence", help="criterion for the depth rows")
    ap.add_argument("--cache", default="dynamic", choices=["dynamic", "static"], help="KV cache of prunelab speed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    rows_dir = work / f"rows-{args.cache}"
    rows_dir.mkdir(parents=True, exist_ok=True)
    structure = has_structure()
    fill = {"structured_method": args.structured_method, "depth_method": args.depth_method,
            "depth4": str(4 / 30), "depth8": str(8 / 30)}
    wanted = args.rows.split(",") if args.rows else list(ROWS)
    skipped = []
    for row in wanted:
        model_name, kernel = ROWS[row]
        if MODELS[model_name] and "--structure" in MODELS[model_name] and not structure:
            skipped.append(row)
            continue
        target = row_file(rows_dir, row)
        if target.is_file():
            continue
        model = make_model(model_name, work, fill)
        cmd = [sys.executable, "-m", "prunelab.cli", "speed", model, "--baseline", BASELINE, "--kernel", kernel,
               *SETTINGS, "--cache", args.cache, "--json", str(target) + ".tmp", "--quiet"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        os.replace(str(target) + ".tmp", target)
    out = args.out + ("" if args.cache == "dynamic" else f"_{args.cache}")
    earlier = json.loads(Path(out + ".json").read_text())["rows"] if Path(out + ".json").is_file() else {}
    results = {}  # rows measured now (their files under --work), else as the results file had them
    for row in ROWS:
        target = row_file(rows_dir, row)
        if target.is_file():
            results[row] = json.loads(target.read_text())
        elif row in earlier:
            results[row] = earlier[row]
    Path(out + ".json").write_text(json.dumps({"rows": results, "skipped": skipped}, indent=1))
    Path(out + ".md").write_text(render(results, skipped, args.cache))
    print(render(results, skipped, args.cache))
    return 0


def render(results: dict, skipped: list[str], cache: str = "dynamic") -> str:
    lines = [f"# Speed on the embedded model (SmolLM2-135M, float32, CPU, {cache} KV cache)", "",
             f"Command: `flock /tmp/prunelab-heavy.lock python benchmarks/speed_table.py --cache {cache}`; each row is "
             "`prunelab speed MODEL --baseline smollm2-135m --threads 2 --batch 1 --prompt-len 512 --new-tokens 128 "
             f"--repeats 5 --cache {cache} --kernel K`, the model and its dense baseline each in its own process. Figures are medians "
             "of 5 repeats after a warm-up [min-max]; x = ratio to the dense baseline measured in the same "
             "invocation; ideal = from prefill FLOPs / decode bytes per token of the non-zero weights (LM head "
             "included); 'of ideal' = measured / ideal.", "",
             "| row | prefill tok/s | x (ideal, of ideal) | decode tok/s | x (ideal, of ideal) | TTFT s | peak RSS MiB (x) "
             "| non-zero params M | disk MiB | kernel | load avg start -> end |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, r in results.items():
        rep = r["repeats"]

        def spread(key, fmt):
            return f"{format(r[key], fmt)} [{format(rep[key]['min'], fmt)}-{format(rep[key]['max'], fmt)}]"

        def ratio(key):
            return f"{r['ratios'][key]:.3f}x ({r['ideal'][key]:.3f}x, {r['of_ideal'][key]:.2f})"

        lines.append(f"| {row} | {spread('prefill_tokens_per_s', '.0f')} | {ratio('prefill_tokens_per_s')} | "
                     f"{spread('decode_tokens_per_s', '.1f')} | {ratio('decode_tokens_per_s')} | "
                     f"{spread('ttft_s', '.3f')} | {r['peak_rss_bytes'] / 2**20:.0f} ({r['ratios']['peak_rss_bytes']:.2f}x) | "
                     f"{r['nonzero_params'] / 1e6:.1f} | {r['disk_bytes'] / 2**20:.0f} | {r['kernel']['summary']} | "
                     f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f} |")
    lines += ["", "Dense baseline of each row (the spread shows the machine's noise between invocations):", "",
              "| row | baseline prefill tok/s | baseline decode tok/s | baseline TTFT s | baseline peak RSS MiB |",
              "|---|---|---|---|---|"]
    for row, r in results.items():
        b = r["baseline"]
        lines.append(f"| {row} | {b['prefill_tokens_per_s']:.0f} | {b['decode_tokens_per_s']:.1f} | {b['ttft_s']:.3f} | "
                     f"{b['peak_rss_bytes'] / 2**20:.0f} |")
    if skipped:
        lines += ["", "Not measured (prunelab prune has no --structure on this checkout yet): " + ", ".join(skipped)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
