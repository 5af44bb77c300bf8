"""Benchmark: every candidate of seed 002's Table 4 plus the bias indicator (Table 3), layer-wise allocation
(OWL and search vs uniform), and the leaderboard of all algorithms, on the embedded model.

Protocol of benchmarks/core_methods.py: calibration 64 x 512 tokens of C4 (seed 0); WikiText-2 test perplexity at
seqlen 512 over the first 128 windows; zero-shot mean accuracy over the 9 tasks on the first ``--limit`` items of
each (a limit keeps it affordable on 2 CPUs; the full-dataset agreement with lm-eval is in zeroshot_vs_lmeval*).
Every run goes through ``prunelab sweep`` into one results store, so rerunning the same command after an
interruption continues where it stopped (finished runs are kept; a failing run is stored with its reason).

    python benchmarks/zoo.py                          # all parts, then the results and the report
    python benchmarks/zoo.py --parts table4           # a subset (table4, allocation, search, structured, plugins,
                                                      # builtins)
    python benchmarks/zoo.py --render-only            # rewrite results/zoo.{md,json} and the report from the store
    python benchmarks/zoo.py --lock /tmp/prunelab-heavy.lock   # each sweep under a shared lock (busy machines)
    python benchmarks/zoo.py --render-only --carry OLD.json    # cells this store lacks taken from an earlier
                                                               # rendering (marked †)
    python benchmarks/zoo.py --restore results/zoo_runs.jsonl  # start from the committed runs (a fresh machine)

Writes benchmarks/results/zoo.md, zoo.json, zoo_runs.jsonl (the store's runs, see ``prunelab store``) and
benchmarks/results/zoo_report/ (report.md/.html with the leaderboard).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PROTOCOL = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seeds", "0",
            "--eval", "wikitext2", "--eval-seqlen", "512", "--eval-windows", "128", "--eval-batch-size", "8"]
SETTINGS = ("0.50", "0.60", "0.70", "2:4")

# Seed 002, Table 4 (and Table 3's bias indicator): idea -> (prunelab method spec, note)
TABLE4 = [
    ("01", "Gradient Sensitive Pruning", "taylor", "first-order Taylor |w·E[∂L/∂w]|, dense-model gradients"),
    ("02", "L1 Norm Pruning", "struct-magnitude", "structured: MLP channels and attention heads ranked by the norm "
                                                  "of their weights, removed (--structure channels,heads --method "
                                                  "magnitude); level = fraction of the blocks' parameters"),
    ("03", "Structured Pruning", "struct-flap", "structured: FLAP's fluctuation criterion with its bias "
                                                "compensation (--structure channels,heads --method flap)"),
    ("04", "K-means Clustering Pruning", "kmeans", "1-D k-means per layer (16 clusters), clusters nearest zero first"),
    ("05", "Random Pruning", "random", "uniformly random mask"),
    ("06", "Random Pattern Pruning", "random-nm", "random N:M mask: the 2:4 run of `random` (50%); no N:M pattern "
                                                  "with M dividing 576 and 1536 prunes exactly 60% or 70%"),
    ("07", "Variational Dropout Pruning", "vardrop", "per-weight log α fitted on each layer's reconstruction "
                                                     "loss (10 rounds of coordinate descent; β per layer so that at the start "
                                                     "the target fraction has log α > −3), highest α pruned (ranked "
                                                     "by θ²H_jj, the same order without ties)"),
    ("08", "Gradient based Pruning", "gradient", "GBLM-Pruner: |w|·‖X_j‖ + 100·|w|·‖∂L/∂w‖ over sequences"),
    ("09", "Elastic Weight Consolidation Pruning", "fisher", "diagonal Fisher E[(∂L/∂w)²]·w²"),
    ("10", "Dynamic Pruning with Reinforcement Learning", "wanda+search",
     "evolutionary search of per-block sparsity, reward = −calibration loss (budget 400 forward passes), "
     "Wanda masks"),
    ("T3", "Bias as pruning indicator", "bias", "output units ranked by |bias|"),
]
PARTS = {
    "table4": {"methods": "magnitude,wanda,sparsegpt,random,fisher,gradient,taylor,kmeans,vardrop,bias",
               "levels": "0.5,0.6,0.7", "patterns": "unstructured,2:4"},
    "allocation": {"methods": "wanda+owl,sparsegpt+owl,wanda+search,sparsegpt+search", "levels": "0.7",
                   "patterns": "unstructured"},
    "search": {"methods": "wanda+search", "levels": "0.5,0.6", "patterns": "unstructured"},
    "builtins": {"methods": "mama,dsnot,neg-magnitude,alps", "levels": "0.5,0.6,0.7", "patterns": "unstructured,2:4"},
}
STRUCTURED = {"struct-magnitude": "magnitude", "struct-flap": "flap"}  # label -> --method with --structure
STRUCTURED_LEVELS = ("0.5", "0.6", "0.7")


def sweep(store: Path, part: dict, limit: int, lock: list[str]) -> None:
    """One sweep per method (each under the shared heavy lock, so other jobs can run in between)."""
    for method in part["methods"].split(","):
        cmd = [sys.executable, "-m", "prunelab.cli", "sweep", "--methods", method, "--levels", part["levels"],
               "--patterns", part["patterns"], *PROTOCOL, "--tasks", "all", "--limit", str(limit),
               "--store", str(store), "--quiet"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run([*lock, *cmd], check=True)


def bench_plugins(store: Path, limit: int, lock: list[str]) -> None:
    """Generated plug-ins (benchmarks/plugins/generated/*.py) through the gate, passing ones benchmarked."""
    for path in sorted((HERE / "plugins" / "generated").glob("*.py")):
        cmd = [sys.executable, "-m", "prunelab.cli", "check-algorithm", str(path), "--author", "generated",
               "--store", str(store), "--bench", "--tasks", "all", "--limit", str(limit)]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run([*lock, *cmd])  # a rejected plug-in is a result, not an error


def structured(store: Path, limit: int, lock: list[str]) -> None:
    """Structured runs (not sweepable): each `prunelab prune --structure channels,heads` + `prunelab eval` in
    their own processes, filed into the same store (skipped when already there)."""
    for name in STRUCTURED:
        for level in STRUCTURED_LEVELS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--store", str(store), "--limit", str(limit),
                   "--structured-run", f"{name}@{level}"]
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run([*lock, *cmd], check=True)


def structured_run(store_path: Path, spec: str, limit: int) -> None:
    """One structured run into the store: identity = method, structure, level, protocol and versions."""
    import shutil
    import tempfile

    from prunelab.bench.store import ResultsStore, run_key
    from prunelab.bench.sweep import KEY_PACKAGES, _loadavg
    from prunelab.record import host_description, package_versions

    name, level = spec.split("@")
    versions = package_versions()
    identity = {"structured": True, "method": name, "criterion": STRUCTURED[name], "structure": "channels,heads",
                "level": float(level), "calibration": PROTOCOL[:8], "eval": {"wikitext2": PROTOCOL[10:], "tasks": "all",
                                                                             "limit": limit},
                "versions": {k: versions.get(k) for k in KEY_PACKAGES}}
    key = run_key(identity)
    store = ResultsStore(store_path)
    try:
        if store.claim(key, model="smollm2-135m", method=name, pattern="unstructured", level=float(level),
                       identity=identity):
            print(f"{spec}: already in the store")
            return
        work = Path(tempfile.mkdtemp(prefix="prunelab-zoo-"))
        load_start = _loadavg()
        try:
            prune = [sys.executable, "-m", "prunelab.cli", "prune", "--method", STRUCTURED[name], "--structure",
                     "channels,heads", "--sparsity", level, "--calib", "c4", "--calib-samples", "64",
                     "--calib-seqlen", "512", "--seed", "0", "--out", str(work / "model"), "--quiet"]
            subprocess.run(prune, check=True)
            record = json.loads((work / "model" / "prunelab.json").read_text())
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "prunelab.cli", "eval", str(work / "model"), "--data", "wikitext2",
                            "--seqlen", "512", "--max-windows", "128", "--tasks", "all", "--limit", str(limit),
                            "--json", str(work / "eval.json"), "--quiet"], check=True)
            evaluation = json.loads((work / "eval.json").read_text())
            eval_seconds = time.perf_counter() - started
            summary = record["summary"]
            files = sum(f.stat().st_size for f in (work / "model").glob("*.safetensors"))
            metrics = {"perplexity": {"wikitext2": {k: evaluation[k] for k in ("ppl", "nll", "tokens", "windows",
                                                                                 "finite") if k in evaluation}},
                       "tasks": evaluation.get("tasks", {}),
                       "size": {"sparsity": summary["achieved_sparsity"], "nonzero_params": summary["total_params_after"],
                                "dense_checkpoint_bytes": files, "bitmask_checkpoint_bytes": files}}
            store.finish(key, "done", metrics=metrics, layers=record.get("layers"), record={
                "prune_seconds": record["prune_seconds"], "eval_seconds": eval_seconds,
                "peak_rss_bytes": record["peak_rss_bytes"], "config": record["config"], "summary": summary,
                "loadavg": {"start": load_start, "end": _loadavg()}, "versions": versions, "host": host_description()})
        except Exception as exc:
            store.finish(key, "failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        store.close()


def label(row: dict) -> str:
    return f"{row['level']:.2f}" if row["pattern"] == "unstructured" else row["pattern"]


def cell(row: dict | None) -> dict:
    if row is None:
        return {"status": "not run"}
    out = {"status": row["status"], "reason": row.get("reason")}
    if row["status"] == "done":
        m, rec = row["metrics"], row["record"]
        accs = [t["acc"] for t in (m.get("tasks") or {}).values() if "acc" in t]
        out.update({"ppl": m["perplexity"]["wikitext2"]["ppl"], "prune_seconds": rec["prune_seconds"],
                    "peak_rss_mib": rec["peak_rss_bytes"] / 2**20, "sparsity": m["size"]["sparsity"],
                    "mean_acc": 100 * sum(accs) / len(accs) if accs else None, "loadavg": rec.get("loadavg"),
                    "allocation": rec.get("allocation")})
    return out


def fmt(c: dict) -> str:
    mark = " †" if c.get("carried") else ""
    if c["status"] == "done":
        ppl = c["ppl"] if isinstance(c["ppl"], float) else float(c["ppl"])
        return (f"{ppl:,.2f}" if math.isfinite(ppl) else str(ppl)) + mark
    if c["status"] == "NA":
        return f"NA ({c['reason']})"
    return f"NA ({c.get('reason') or c['status']})" + mark


def carried_cells(path: Path) -> dict:
    """Cells of an earlier rendering (its zoo.json) by (method, setting): what ``--carry`` fills in where this store
    has no row. Each keeps, or gets, ``carried`` = the date that rendering was made, so a re-render carries it on."""
    data = json.loads(path.read_text())
    date = data["meta"]["date"]
    dates = (data["meta"].get("carried") or {}).get("cells", {})  # what that rendering had carried itself
    out = {}

    def put(key, c):
        if c.get("status") in ("done", "failed") and key not in out:
            out[key] = {**c, "carried": c.get("carried") or dates.get(f"{key[0]}@{key[1]}") or date}

    for entry in data["table4"]:
        method = "random" if entry["method"] == "random-nm" else entry["method"]
        for setting, c in entry["cells"].items():
            put((method, setting), c)
    comp = data["comparisons"]
    for m, v in comp["owl_vs_uniform_70"].items():
        for alloc, ppl in v.items():
            if ppl is not None:
                put((m if alloc == "uniform" else f"{m}+{alloc}", "0.70"), {"status": "done", "ppl": ppl})
    for m, v in comp["search_vs_owl_70"].items():
        if v["search"] is not None:
            put((f"{m}+search", "0.70"), {"status": "done", "ppl": v["search"],
                                           "allocation": {"search": v["search_record"]}})
    for m, v in comp["gradient_criteria_vs_wanda"].items():
        for setting, ppl in v.items():
            if ppl is not None:
                put((m, setting), {"status": "done", "ppl": ppl})
    return out


def carried_rows(carried: dict, model: str) -> list[dict]:
    """The carried cells as store-shaped rows for the leaderboard (each keeps its ``carried`` date)."""
    rows = []
    for (method, setting), c in carried.items():
        nm = setting == "2:4"
        record = {"prune_seconds": c.get("prune_seconds"),
                  "peak_rss_bytes": c["peak_rss_mib"] * 2**20 if c.get("peak_rss_mib") is not None else None}
        if method in STRUCTURED:
            record["config"] = {"structure": "channels,heads"}
        rows.append({"model": model, "method": method, "pattern": "2:4" if nm else "unstructured",
                     "level": 0.5 if nm else float(setting), "status": c["status"], "reason": c.get("reason"),
                     "metrics": {"perplexity": {"wikitext2": {"ppl": c["ppl"]}}} if c["status"] == "done" else None,
                     "record": record, "mean_acc": c.get("mean_acc"), "carried": c["carried"]})
    return rows


def render(store_path: Path, carry: Path | None = None, superseded: tuple[str, ...] = ()) -> None:
    from prunelab.bench.report import write_report
    from prunelab.bench.store import ResultsStore
    from prunelab.record import host_description, package_versions

    store = ResultsStore(store_path)
    rows = [r for r in store.rows() if r["status"] in ("done", "failed")]
    algorithms = store.algorithms()
    RESULTS.mkdir(exist_ok=True)
    exported = store.export_jsonl(RESULTS / "zoo_runs.jsonl")  # the store's results outlive its machine
    store.close()
    cells = {(r["method"], label(r)): cell(r) for r in rows}
    # cells of a method whose algorithm changed since that rendering are not carried (they describe old code)
    carried = {k: c for k, c in (carried_cells(carry) if carry else {}).items() if k[0] not in superseded}
    for key, c in carried.items():
        cells.setdefault(key, c)

    def at(method, setting) -> dict:
        return cells.get((method, setting)) or {"status": "not run"}

    table4 = []
    for number, idea, spec, note in TABLE4:
        row_cells = {}
        for setting in SETTINGS:
            if spec in STRUCTURED and setting == "2:4":
                c = {"status": "NA", "reason": "structured pruning removes whole channels and heads; an N:M pattern "
                                               "is not a structure"}
            elif spec == "random-nm":
                c = at("random", "2:4") if setting in ("0.50", "2:4") else {
                    "status": "NA", "reason": "no N:M pattern with M dividing 576 and 1536 gives exactly "
                                              f"{float(setting):.0%}"}
            elif spec == "wanda+search" and setting == "2:4":
                c = {"status": "NA", "reason": "an N:M pattern fixes every layer's sparsity; there is nothing to allocate"}
            else:
                c = at(spec, setting)
            row_cells[setting] = c
        table4.append({"number": number, "idea": idea, "method": spec, "note": note, "cells": row_cells})

    def fmt_at(method, setting) -> str:
        c = at(method, setting)
        return fmt(c) if c["status"] == "done" else "-"

    def ppl(method, setting):
        c = at(method, setting)
        return c.get("ppl") if c["status"] == "done" else None

    comparisons = {
        "owl_vs_uniform_70": {m: {"uniform": ppl(m, "0.70"), "owl": ppl(f"{m}+owl", "0.70")} for m in ("wanda", "sparsegpt")},
        "search_vs_owl_70": {m: {"owl": ppl(f"{m}+owl", "0.70"), "search": ppl(f"{m}+search", "0.70"),
                                 "search_record": (at(f"{m}+search", "0.70").get("allocation") or {}).get("search")}
                             for m in ("wanda", "sparsegpt")},
        "gradient_criteria_vs_wanda": {m: {s: ppl(m, s) for s in ("0.50", "0.70")} for m in ("wanda", "taylor", "fisher", "gradient")},
    }
    for entry in comparisons["search_vs_owl_70"].values():
        if entry["search_record"]:
            entry["search_record"] = {k: v for k, v in entry["search_record"].items() if k != "trace"}
    meta = {"protocol": {"calibration": "c4 train shard-0 sample, 64 x 512, seed 0",
                         "eval": "wikitext2 test, seqlen 512, first 128 windows",
                         "zero_shot": f"mean acc over 9 tasks, first {_limit(rows)} items of each"},
            "store": str(store_path), "versions": package_versions(), "host": host_description(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "carried": {"from": str(carry), "cells": {f"{m}@{s}": c["carried"] for (m, s), c in sorted(carried.items())
                                                     if cells[(m, s)] is c}} if carry else None}
    (RESULTS / "zoo.json").write_text(json.dumps({"meta": meta, "table4": table4, "comparisons": comparisons,
                                                  "gate": [{k: a[k] for k in ("name", "author", "gate", "reason")}
                                                           for a in algorithms]}, indent=1, default=str) + "\n")
    lines = ["# Seed 002 Table 4 candidates, allocation, leaderboard: smollm2-135m", "",
             f"Calibration: {meta['protocol']['calibration']}. Evaluation: {meta['protocol']['eval']}; "
             f"zero-shot: {meta['protocol']['zero_shot']}. Host: {meta['host']['cpu_count']} CPUs (shared with other "
             f"jobs: see each run's load average in zoo.json), torch {meta['versions']['torch']}, {meta['date']}. "
             f"Dense: {_dense(rows)}.", *_carry_note(meta), "",
             "## Table 4 (and Table 3's bias indicator): WikiText-2 perplexity", "",
             "| # | idea | prunelab | 50% | 60% | 70% | 2:4 | mean prune s | peak RSS MiB | mean acc 50/60/70/2:4 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in table4:
        cs = entry["cells"]
        done = [c for c in cs.values() if c["status"] == "done"]
        prune = f"{sum(c['prune_seconds'] for c in done) / len(done):.1f}" if done else "-"
        rss = f"{max(c['peak_rss_mib'] for c in done):.0f}" if done else "-"
        accs = "/".join(f"{c['mean_acc']:.1f}" if c.get("mean_acc") is not None else "-" for c in cs.values())
        lines.append(f"| {entry['number']} | {entry['idea']} | `{entry['method']}`: {entry['note']} | "
                     + " | ".join(fmt(c) for c in cs.values()) + f" | {prune} | {rss} | {accs} |")
    lines += ["", "## Allocation at 70%", "", "| method | uniform | OWL | search | search: proxy loss uniform / OWL / "
              "best, forward passes |", "|---|---|---|---|---|"]
    for m in ("wanda", "sparsegpt"):
        s = comparisons["search_vs_owl_70"][m]
        rec = s["search_record"] or {}
        proxy = (f"{rec.get('proxy_loss_uniform', float('nan')):.4f} / {rec.get('proxy_loss_owl', float('nan')):.4f} / "
                 f"{rec.get('proxy_loss_best', float('nan')):.4f}, {rec.get('forward_passes')} of "
                 f"{rec.get('budget_forward_passes')}" if rec else "-")
        lines.append(f"| {m} | {fmt_at(m, '0.70')} | {fmt_at(m + '+owl', '0.70')} | {fmt_at(m + '+search', '0.70')} | "
                     f"{proxy} |")
    lines += ["", "## Gradient criteria vs Wanda", "", "| method | 50% | 70% |", "|---|---|---|"]
    for m, v in comparisons["gradient_criteria_vs_wanda"].items():
        lines.append(f"| {m} | {fmt_at(m, '0.50')} | {fmt_at(m, '0.70')} |")
    if algorithms:
        lines += ["", "## Plug-ins through the gate", "", "| plug-in | author | gate | reason |", "|---|---|---|---|"]
        lines += [f"| {a['name']} | {a['author']} | {a['gate']} | {a['reason'] or ''} |" for a in algorithms]
    lines += ["", "The leaderboard (all algorithms ranked, prune time, peak memory, zero-shot accuracy, human vs "
              "generated, gate failures) is in [zoo_report/report.md](zoo_report/report.md).", "",
              f"Every run of this store ({exported} lines: runs and gate verdicts, with their full records) is in "
              "[zoo_runs.jsonl](zoo_runs.jsonl); `python benchmarks/zoo.py --restore benchmarks/results/zoo_runs.jsonl "
              "--render-only` rebuilds the store from it.", "",
              "Reproduce: `python benchmarks/zoo.py` (resumable; `--render-only` rewrites these files from the store).", ""]
    (RESULTS / "zoo.md").write_text("\n".join(lines))
    model = next((r["model"] for r in rows), "smollm2-135m")
    write_report(store_path, RESULTS / "zoo_report", title="prunelab leaderboard: seed 002 candidates and built-ins",
                 carried=carried_rows({k: c for k, c in carried.items() if cells[k] is c}, model))
    print("\n".join(lines))


def _carry_note(meta) -> list[str]:
    carried = meta["carried"]
    if not carried or not carried["cells"]:
        return []
    dates = sorted(set(carried["cells"].values()))
    return ["", f"† measured with the same protocol and code path into an earlier store, rendered {', '.join(dates)}, "
                f"and carried from that rendering's zoo.json (`--carry`); that store was lost with its machine, so "
                f"these {len(carried['cells'])} cells are not in this store; the leaderboard shows them marked † too."]


def _dense(rows) -> str:
    dense = next((r for r in rows if r["method"] == "dense" and r["status"] == "done"), None)
    return f"{dense['metrics']['perplexity']['wikitext2']['ppl']:.2f}" if dense else "-"


def _limit(rows):
    return next((r["identity"]["eval"]["protocol"].get("task_limit") for r in rows if r.get("identity")), None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="runs/zoo.db")
    parser.add_argument("--parts", default="table4,allocation,search,structured,plugins,builtins")
    parser.add_argument("--limit", type=int, default=40, help="zero-shot items per task")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--carry", type=Path, help="an earlier zoo.json: its cells fill those this store lacks, "
                                                   "marked † (for a store that was lost)")
    parser.add_argument("--superseded", default="", help="with --carry: methods whose carried cells are dropped "
                                                         "(their algorithm changed since; comma list)")
    parser.add_argument("--restore", type=Path, help="first merge an exported store (e.g. results/zoo_runs.jsonl) "
                                                     "into --store: its finished runs are not redone")
    parser.add_argument("--lock", help="run each sweep under `flock LOCK` (e.g. /tmp/prunelab-heavy.lock)")
    parser.add_argument("--structured-run", help=argparse.SUPPRESS)  # one structured run (used by the structured part)
    args = parser.parse_args()
    store = Path(args.store)
    if args.structured_run:
        structured_run(store, args.structured_run, args.limit)
        return 0
    if args.restore:
        from prunelab.bench.store import ResultsStore

        restoring = ResultsStore(store)
        print(f"restored from {args.restore}: {restoring.import_jsonl(args.restore)}")
        restoring.close()
    lock = ["flock", args.lock] if args.lock else []
    if not args.render_only:
        for part in args.parts.split(","):
            if part == "plugins":
                bench_plugins(store, args.limit, lock)
            elif part == "structured":
                structured(store, args.limit, lock)
            else:
                sweep(store, PARTS[part], args.limit, lock)
    render(store, args.carry, tuple(m for m in args.superseded.split(",") if m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
