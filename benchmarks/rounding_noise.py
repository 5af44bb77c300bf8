"""How much float32 rounding alone moves a pruned model's perplexity (the floor under "unchanged within 0.1%").

SparseGPT 50% on the protocol of benchmarks/core_methods.py (the embedded model, 64 x 512 C4 tokens seed 0,
WikiText-2 test seqlen 512, first 128 windows), run several times with the *same* calibration sequences fed in a
different order. In exact arithmetic every run is the same: XᵀX is a sum over sequences and each sequence's
activations depend on that sequence alone. In float32 the sums round differently, near-tied saliencies flip, and
the masks and perplexity move. The spread across orders is the rounding noise of the method itself, on one engine.

With `--dtype float64` the whole run (weights, forwards, statistics, SparseGPT's solve, the evaluation's forwards;
the evaluation reduces its logits in float32, as always) is in float64,
whose rounding is ~1e9 times smaller: if the orders then agree to many digits, the float32 spread is rounding
amplified by near-tied masks, and the float64 value is (to those digits) what exact arithmetic gives. Each float32
engine's mean over its orders is set against it; nothing says that mean must equal it (the measured offset is the
answer).

The same with another thread count shows whether the split of the matmuls' work changes anything; with another
`--cpu-linear` kernel (oneDNN's products or torch's MKL/sdpa ones, engine/linear.py), whether the engine's kernel
choice moves the perplexity by more than the orders do: the orders both kernels ran are paired, and the mean of the
per-order differences is given with its standard error. With
`--tool llmcompressor` the same orders go through llm-compressor's SparseGPT (its venv and exported inputs in
$WORK, see benchmarks/llmcompressor/compare.sh), so the two tools' perplexities can be compared against their
own noise rather than one run each.

    python benchmarks/rounding_noise.py [--orders identity,reversed,perm1] [--threads 1] [--cpu-linear aten]
                                        [--dtype float64] [--tool llmcompressor]
Results: benchmarks/results/rounding_noise.{json,md}; finished (tool, kernel, order, threads) rows are kept and skipped
on a rerun.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "llmcompressor"))
from measure import cpu_description, git_commit, write_markdown  # noqa: E402
from baseline import WORK, evaluate, exported_model, llmc_prune_command, venv_python  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FLOAT64 = "prunelab (float64)"  # the engine name of --dtype float64 rows


def order_of(name: str, n: int) -> torch.Tensor:
    if name == "identity":
        return torch.arange(n)
    if name == "reversed":
        return torch.arange(n - 1, -1, -1)
    if name.startswith("perm"):
        return torch.randperm(n, generator=torch.Generator().manual_seed(int(name[4:])))
    raise SystemExit(f"unknown order {name!r}: identity, reversed or permN")


def ordered_calibration(tokenizer, name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The protocol's calibration ids in order ``name``, that order, and what the record says of the ids."""
    from prunelab.api import calibration_data
    from prunelab.config import CalibrationConfig

    ids, info = calibration_data(tokenizer, CalibrationConfig("c4", "train", 64, 512, 0))
    order = order_of(name, ids.shape[0])
    return ids[order], order, info


def run_order(name: str, cpu_linear: str, dtype: str = "float32") -> dict:
    from prunelab.algorithms import get_algorithm
    from prunelab.api import evaluate as evaluate_model
    from prunelab.engine import prune_model
    from prunelab.engine.sequential import EngineOptions
    from prunelab.models.loading import load_model
    from prunelab.patterns import Pattern

    model, tokenizer, _ = load_model("smollm2-135m", dtype=dtype)
    ids, order, info = ordered_calibration(tokenizer, name)
    started = time.perf_counter()
    engine: dict = {}
    prune_model(model, get_algorithm("sparsegpt"), Pattern(0.5), ids, progress=True,
                options=EngineOptions(cpu_linear=cpu_linear), info=engine)
    seconds = time.perf_counter() - started
    ev = evaluate_model(model, tokenizer=tokenizer, data="wikitext2", seqlen=512, max_windows=128, progress=True)
    eval_seconds = time.perf_counter() - started - seconds
    return _row("prunelab", name, order, info, ev["ppl"], seconds) | {"cpu_linear": engine["cpu_linear"] or "aten",
                                                                      "dtype": dtype, "eval_seconds": eval_seconds}


def run_order_llmcompressor(name: str) -> dict:
    """The same order through llm-compressor's SparseGPT (run_llmc.py in its venv), evaluated by `prunelab eval`."""
    from prunelab.models.loading import load_model

    venv_python()  # fails early, saying how to make it
    folder = exported_model()
    _, tokenizer, _ = load_model("smollm2-135m")
    ids, order, info = ordered_calibration(tokenizer, name)
    calib, out = WORK / f"calib-{name}.pt", WORK / f"out-noise-{name}"
    torch.save(ids.clone(), calib)
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(llmc_prune_command(folder, calib, "sparsegpt", out, "--threads", str(torch.get_num_threads())),
                   check=True, capture_output=True)
    seconds = json.loads((out / "llmc_run.json").read_text())["seconds_oneshot"]
    ppl = evaluate(out, WORK / f"noise-{name}-eval.json")
    shutil.rmtree(out, ignore_errors=True)
    return _row("llmcompressor", name, order, info, ppl, seconds)


def _row(tool: str, name: str, order: torch.Tensor, info: dict, ppl: float, seconds: float) -> dict:
    return {"tool": tool, "order": name, "first_rows": order[:4].tolist(),
            "calibration_tokens_sha256": info["tokens_sha256"], "ppl": ppl, "prune_seconds": seconds,
            "threads": torch.get_num_threads(), "cpu": cpu_description(), "commit": git_commit()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="identity,reversed,perm1")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--tool", choices=["prunelab", "llmcompressor"], default="prunelab")
    parser.add_argument("--cpu-linear", choices=["auto", "onednn", "aten"], default="auto",
                        help="prunelab's CPU kernel for block forwards and XᵀX (engine/linear.py)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="prunelab's model dtype; float64 runs everything in float64 (its kernels are aten's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from prunelab.engine.linear import resolve_cpu_linear

    kernel = (resolve_cpu_linear(args.cpu_linear, "cpu") or "aten") if args.tool == "prunelab" else None
    if args.dtype != "float32" and args.tool != "prunelab":
        raise SystemExit("--dtype float64 is for prunelab runs")
    path = RESULTS / "rounding_noise.json"
    rows = {_key(r): r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    cpu = cpu_description()
    for name in args.orders.split(","):
        wanted = {"tool": args.tool, "cpu_linear": kernel, "dtype": args.dtype, "order": name, "threads": args.threads,
                  "cpu": cpu}
        if _key(wanted) not in rows:
            row = run_order(name, kernel, args.dtype) if args.tool == "prunelab" else run_order_llmcompressor(name)
            rows[_key(row)] = row
            path.write_text(json.dumps({"rows": list(rows.values())}, indent=1))
    ref = json.loads((RESULTS / "core_methods.json").read_text())
    lines = ["# Rounding noise: SparseGPT 50% perplexity when only the order of the calibration sequences, the "
             "number of threads or the engine's CPU kernel changes", "",
             "Same 64 x 512 C4 sequences (seed 0); WikiText-2 test, seqlen 512, first 128 windows. prunelab's kernel: "
             "`aten` is torch's MKL sgemm and sdpa (every row before oneDNN existed), `onednn` its inner product and "
             "the chunked causal attention (`--cpu-linear`, engine/linear.py); `float64` runs the whole model, statistics, "
             "solve and the evaluation's forwards in float64 (torch's aten kernels; the logits are reduced in float32 as in "
             "every row).", "",
             "| engine | order | first rows | threads | CPU | WikiText-2 ppl | prune s |",
             "|---|---|---|---|---|---|---|"]
    ordered = sorted(rows.values(), key=lambda r: (*_group(r), r["order"]))
    lines += [f"| {_engine(r)} | {r['order']} | {r['first_rows']} | {r['threads']} | {r.get('cpu', '?')} | "
              f"{_ppl(r['ppl'], _engine(r))} | {r['prune_seconds']:.0f} |"
              for r in ordered]
    lines.append("")
    for group in sorted({_group(r) for r in ordered}):
        ppls = [r["ppl"] for r in ordered if _group(r) == group]
        if len(ppls) > 1:
            lines.append(f"- {group[0]}, {group[1]}, {group[2]} thread(s): mean {_ppl(statistics.mean(ppls), group[0])}, "
                         f"standard deviation {_fraction(statistics.stdev(ppls) / statistics.mean(ppls))}, spread "
                         f"(max - min) / mean **{_fraction(_spread(ppls))}** over {len(ppls)} orders.")
    lines += _paired(ordered, "prunelab (onednn)", "prunelab (aten)")
    lines += _paired(ordered, "prunelab (aten)", "llmcompressor")
    lines += _against_float64(ordered)
    lines += [
              f"- Reference figure in core_methods.json (an earlier engine on another host, 2 threads): "
              f"{_reference(ref):.3f}.", "",
              "Reproduce: `python benchmarks/rounding_noise.py --threads N --orders O1,O2,... [--cpu-linear aten|onednn] "
              "[--dtype float64] [--tool llmcompressor]` (one row per engine, order, thread count and CPU; finished "
              "rows are kept)"]
    write_markdown(RESULTS / "rounding_noise.md", lines)
    return 0


def _paired(rows: list[dict], first: str, second: str) -> list[str]:
    """Engines ``first`` and ``second`` on the orders both ran on one CPU (an order run on several thread counts
    counted once, its fewest-threads row: the identity order gave the same bits on 1 and 2 threads): the means, and
    the mean of the per-order relative differences with its standard error, i.e. how far apart the engines are
    beyond the orders' noise."""
    lines = []
    for cpu in sorted({r.get("cpu", "?") for r in rows}):
        by_engine: dict[str, dict[str, float]] = {}
        for r in rows:
            if r.get("cpu", "?") == cpu:
                by_engine.setdefault(_engine(r), {}).setdefault(r["order"], r["ppl"])
        ours, theirs = by_engine.get(first, {}), by_engine.get(second, {})
        common = [o for o in ours if o in theirs]
        if len(common) < 2:
            continue
        a, b = [ours[o] for o in common], [theirs[o] for o in common]
        diffs = [x / y - 1 for x, y in zip(a, b)]
        error = statistics.stdev(diffs) / len(diffs) ** 0.5
        lines.append(f"- {cpu}, same {len(common)} orders ({', '.join(common)}): {first} mean {statistics.mean(a):.3f} "
                     f"(spread {_spread(a):.2%}), {second} mean {statistics.mean(b):.3f} (spread {_spread(b):.2%}); "
                     f"{first} is **{statistics.mean(diffs):+.2%} ± {error:.2%}** (mean per-order difference ± its "
                     f"standard error) from {second}, per order {min(diffs):+.2%} to {max(diffs):+.2%}.")
    return lines


def _against_float64(rows: list[dict]) -> list[str]:
    """Each float32 engine's orders against the float64 run's value on the same CPU: their mean's offset with its
    standard error (the orders' standard deviation over the square root of their number), and how many lie below."""
    lines = []
    for cpu in sorted({r.get("cpu", "?") for r in rows}):
        here = [r for r in rows if r.get("cpu", "?") == cpu]
        exact = [r["ppl"] for r in here if _engine(r) == FLOAT64]
        if not exact:
            continue
        reference = statistics.mean(exact)
        for engine in sorted({_engine(r) for r in here} - {FLOAT64}):
            ppls = list({r["order"]: r["ppl"] for r in here if _engine(r) == engine}.values())
            if len(ppls) < 2:
                continue
            offsets = [p / reference - 1 for p in ppls]
            error = statistics.stdev(offsets) / len(offsets) ** 0.5
            below = sum(o < 0 for o in offsets)
            lines.append(f"- {cpu}: {engine}'s mean over {len(ppls)} orders is **{statistics.mean(offsets):+.2%} ± "
                         f"{error:.2%}** from the float64 value {reference:.4f} (single orders {min(offsets):+.2%} "
                         f"to {max(offsets):+.2%}, {below} of {len(ppls)} below it).")
    return lines


def _ppl(value: float, engine: str) -> str:
    return f"{value:.6f}" if engine == FLOAT64 else f"{value:.3f}"  # float64 rows agree far below 1e-3


def _fraction(x: float) -> str:
    """A relative figure as a percentage, or in scientific notation when too small for two decimals of one."""
    return f"{x:.2%}" if x == 0 or x >= 1e-4 else f"{x:.1e}"


def _tool(row: dict) -> str:
    return row.get("tool", "prunelab")  # rows from before --tool existed are prunelab's


def _engine(row: dict) -> str:
    """The tool, and for prunelab its CPU kernel (rows from before --cpu-linear existed ran torch's aten kernels)."""
    if _tool(row) == "llmcompressor":
        return "llmcompressor"
    return FLOAT64 if row.get("dtype") == "float64" else f"prunelab ({row.get('cpu_linear') or 'aten'})"


def _group(row: dict) -> tuple[str, str, int]:
    """Rows that differ only in the calibration order: same engine, CPU and thread count."""
    return _engine(row), row.get("cpu", "?"), row["threads"]


def _key(row: dict) -> str:
    return f"{_engine(row)}:{row['order']}@{row['threads']}:{row.get('cpu', '?')}"


def _spread(ppls: list[float]) -> float:
    return (max(ppls) - min(ppls)) / statistics.mean(ppls)


def _reference(ref: dict) -> float:
    for row in ref.get("rows", ref if isinstance(ref, list) else []):
        if row.get("method") == "sparsegpt" and abs(float(row.get("level", row.get("sparsity", 0))) - 0.5) < 1e-9:
            return float(row["ppl"])
    return float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
