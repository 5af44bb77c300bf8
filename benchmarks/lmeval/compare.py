"""prunelab's zero-shot scores vs lm-evaluation-harness on the same local files, item by item.

Set up the harness once (its own venv; torch pinned so pip takes the CPU wheel):

    python -m venv /tmp/lmeval/venv
    /tmp/lmeval/venv/bin/pip install torch==2.13.0 lm-eval==0.4.13 transformers==5.24.0 accelerate

Then, from the repository root:

    python benchmarks/lmeval/compare.py --limit 300                       # dense embedded model
    python benchmarks/lmeval/compare.py --limit 300 --model dense=smollm2-135m --model sparsegpt50=runs/sgpt50

For each model: prunelab scores the tasks in this process (per task: load + tokenize + score, timed), then
``run_lmeval.py`` runs the harness's ``hf`` model (``--dtype``, float32 by default; CPU) on the local task YAMLs
in ``tasks/`` with the same ``--limit`` (both take the first N items in file order) and batch size. The report
(benchmarks/results/zeroshot_vs_lmeval.md, plus a .json) gives both numbers per task, their difference, per-item
log-likelihood agreement, seconds and tokens/s, and estimates of full-dataset times from the measured rates.

Long comparisons resume: each tool's finished tasks are kept under ``--work`` (prunelab's in ``LABEL/prunelab/``,
the harness's in ``LABEL/``) and a rerun with the same model, limit, batch size and dtype scores only the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def model_folder(source: str) -> str:
    """An HF folder the harness can load: the dequantized cache folder for an embedded/.gguf model."""
    from prunelab.models.loading import _gguf_as_folder, resolve_source

    resolved = resolve_source(source)
    if resolved.kind in ("embedded", "gguf"):
        return str(_gguf_as_folder(Path(resolved.location), resolved.identity["sha256"]))
    return resolved.location


def _kept(path: Path, settings: dict) -> dict | None:
    """An earlier result at ``path`` if it was made with the same ``settings``, else None."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("settings") == settings else None


def run_prunelab(source: str, tasks: list[str], limit: int | None, batch_size: int, share: bool | None,
                 dtype: str = "float32", keep: Path | None = None) -> dict:
    import torch

    from prunelab.models import load_model
    from prunelab.eval.zeroshot import build_requests, score_tasks

    from prunelab.eval.generation import generate_samples

    settings = {"source": source, "limit": limit, "batch_size": batch_size, "share": share, "dtype": dtype}
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        done = {name: _kept(keep / f"{name}.json", settings) for name in tasks + ["samples"]}
        if all(done.values()):
            return {"threads": torch.get_num_threads(), "samples": done["samples"]["result"],
                    "tasks": {name: done[name]["result"] for name in tasks}}
    model, tokenizer, _ = load_model(source, dtype)
    kept_samples = done["samples"] if keep is not None else None
    out = {"threads": torch.get_num_threads(), "tasks": {},
           "samples": kept_samples["result"] if kept_samples else generate_samples(model, tokenizer)}
    if keep is not None and not kept_samples:
        (keep / "samples.json").write_text(json.dumps({"settings": settings, "result": out["samples"]}))
    for name in tasks:
        if keep is not None and done[name]:
            out["tasks"][name] = done[name]["result"]
            print(f"[prunelab] {name}: kept from {keep / (name + '.json')}", flush=True)
            continue
        load = _loadavg()
        start = time.perf_counter()
        requests = build_requests(tokenizer, name, limit=limit)
        built = time.perf_counter()
        result = score_tasks(model, [requests], batch_size=batch_size, share_context=share, progress=False,
                             details=True)[name]
        result["build_seconds"] = built - start
        result["wall_seconds"] = time.perf_counter() - start
        result["loadavg_before"] = load
        out["tasks"][name] = result
        if keep is not None:
            (keep / f"{name}.json").write_text(json.dumps({"settings": settings, "result": result}))
        print(f"[prunelab] {name}: {result['items']} items, {result['wall_seconds']:.1f}s "
              f"(score {result['seconds']:.1f}s), acc={result['acc']:.4f}", flush=True)
    return out


def run_harness(python: str, folder: str, tasks: list[str], limit: int | None, batch_size: int, work: Path,
                bootstrap_iters: int, dtype: str = "float32") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    wanted = {"pretrained": folder, "limit": limit, "batch_size": batch_size, "dtype": dtype}

    def finished(name: str) -> bool:
        path = work / f"{name}.json"
        if not path.exists():
            return False
        meta = json.loads(path.read_text())["meta"]
        return all(meta.get(k) == v for k, v in wanted.items())

    todo = [name for name in tasks if not finished(name)]
    if len(todo) < len(tasks):
        print(f"[lm-eval] kept from {work}: {', '.join(n for n in tasks if n not in todo) or '-'}", flush=True)
    if not todo:
        results = {name: json.loads((work / f"{name}.json").read_text()) for name in tasks}
        return {"wall_seconds": None, "loadavg_before": None, "command": None, "tasks": results}
    cmd = [python, str(HERE / "run_lmeval.py"), "--pretrained", folder, "--tasks", ",".join(todo),
           "--batch-size", str(batch_size), "--out", str(work), "--bootstrap-iters", str(bootstrap_iters),
           "--dtype", dtype]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = dict(os.environ)
    env.setdefault("PRUNELAB_DATA", str(_data_dir()))
    env.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    load = _loadavg()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - start
    results = {name: json.loads((work / f"{name}.json").read_text()) for name in tasks}
    return {"wall_seconds": wall, "loadavg_before": load, "command": cmd, "tasks": results}


def _data_dir() -> Path:
    from prunelab.data import data_dir

    return data_dir()


def item_agreement(ours: dict, theirs: dict) -> dict:
    """Per-item comparison of log-likelihoods and decisions (same items in the same order)."""
    mine = {d["index"]: d for d in ours["details"]}
    max_diff, sum_diff, n_ll = 0.0, 0.0, 0
    flips = {"pred": 0, "acc": 0, "acc_norm": 0, "greedy": 0}
    for item in theirs["items"]:
        d = mine[item["doc_id"]]
        lls = [r[0] for r in item["resps"]]
        for a, b in zip(d["loglikelihoods"], lls, strict=True):
            diff = abs(a - b)
            max_diff, sum_diff, n_ll = max(max_diff, diff), sum_diff + diff, n_ll + 1
        if d["greedy"] != [r[1] for r in item["resps"]]:
            flips["greedy"] += 1
        if "pred" in d:
            pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
            flips["pred"] += pred != d["pred"]
        for key in ("acc", "acc_norm"):
            if key in item and key in d and float(item[key]) != float(d[key]):
                flips[key] += 1
    return {"items": len(theirs["items"]), "loglikelihoods": n_ll, "max_abs_diff": max_diff,
            "mean_abs_diff": sum_diff / max(n_ll, 1), **{f"{k}_differs": v for k, v in flips.items()}}


def full_token_counts(source: str, tasks: list[str]) -> dict:
    """Tokens each tool feeds the model on the full tasks (tokenizer only, no model run)."""
    from transformers import AutoConfig

    from prunelab.eval.zeroshot import _plan_rows, build_requests
    from prunelab.models.loading import load_model  # noqa: F401  (same tokenizer as the runs)
    from transformers import AutoTokenizer

    folder = model_folder(source)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    max_length = getattr(config, "max_position_embeddings", 2048)
    window = getattr(config, "sliding_window", None)
    counts = {}
    for name in tasks:
        reqs = build_requests(tokenizer, name)
        harness = {tuple((c + x)[-(max_length + 1):][:-1]) for c, x in zip(reqs.contexts, reqs.continuations)}
        rows = _plan_rows(reqs.contexts, reqs.continuations, max_length, True, window)
        counts[name] = {"items": len(reqs.items), "requests": reqs.n_requests,
                        "harness_tokens": sum(len(t) for t in harness),
                        "prunelab_tokens": sum(len(r.tokens) for r in rows)}
    return counts


def strings_check(python: str, tasks: list[str], work: Path) -> dict:
    """Every item of every task: the (context, continuation) strings and the gold index the harness builds
    (run_lmeval.py --strings-only, no model) against prunelab's."""
    from prunelab.eval.tasks import load_task

    env = dict(os.environ)
    env.setdefault("PRUNELAB_DATA", str(_data_dir()))
    env.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    subprocess.run([python, str(HERE / "run_lmeval.py"), "--pretrained", "-", "--strings-only", "--tasks",
                    ",".join(tasks), "--out", str(work)], check=True, env=env)
    out = {}
    for name in tasks:
        theirs = json.loads((work / f"{name}.strings.json").read_text())
        items = load_task(name).items
        out[name] = {"items": len(items), "harness_items": len(theirs["requests"]),
                     "requests_equal": sum([list(p) for p in it.pairs()] == r
                                           for it, r in zip(items, theirs["requests"])),
                     "golds_equal": sum(it.gold == g for it, g in zip(items, theirs["golds"]))}
    return out


NOTES = """## Notes and known gaps

- Prompts: the table "Request strings" compares, for every item of every task, the (context, continuation)
  strings and gold index the harness builds on the local files with prunelab's. Tokenization follows the
  harness's `_encode_pair` (no BOS with this tokenizer: `add_bos_token` unset in lm-eval 0.4.13, and SmolLM2's
  tokenizer adds no special tokens); the per-item log-likelihoods above show the token ids and scoring agree.
- HellaSwag: the local copy is llama.cpp's 6-line extraction, not the original JSONL. Both tools read it through the
  same reconstruction (ctx_b = the unfinished last sentence when the context does not end with . ! ?, which the
  harness capitalises; then the harness's bracket cleanup), so their agreement here checks the scorer and the
  harness's string building, not the reconstruction. Against the harness on the original data it may differ for
  about 5 items with numbered contexts and where llama.cpp collapsed runs of 3+ spaces.
- Standard errors: accuracy as the harness (sample std / sqrt(n)). LAMBADA perplexity: prunelab uses the delta
  method, the harness bootstraps (both shown).
- prunelab runs a shared context once per item (packed row, block mask); the harness runs every choice as its own
  sequence. Log-likelihood differences (max |Δll|) are float rounding from different batch shapes.
- Timing: both tools in the same dtype on the same CPU threads, one after the other; prunelab's time includes loading and
  tokenizing the task, the harness's includes its dataset building and request construction (its model load is
  excluded). tok/s = the harness's token count (every choice as its own sequence) / seconds, for both tools, so
  the rates compare work done; prunelab feeds the model fewer tokens for the same work.
"""


def _pruning_record(folder: str) -> dict | None:
    path = Path(folder) / "prunelab.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _dtype_words(dtype: str) -> str:
    if dtype == "float32":
        return "float32"
    return f"{dtype} weights and activations (log-softmax in float32: the harness's softmax_dtype=float32)"


def _pts(x):
    return f"{100 * x:.2f}" if x is not None else "-"


def render(report: dict) -> str:
    lines = [f"# prunelab zero-shot vs lm-evaluation-harness {report.get('harness_version', '(not run)')}", ""]
    lines += [
        f"Date {report['date']}; host: {report['host']}; torch {report['torch']} ({report['threads']} threads), "
        f"transformers {report['transformers']}; both tools {_dtype_words(report.get('dtype', 'float32'))} on CPU, batch size {report['batch_size']}, "
        f"0-shot, {('the first %d items of each task (file order; the harness --limit)' % report['limit']) if report['limit'] else 'all items'}.",
        "The harness runs its `hf` model on task YAMLs that read the same local files (`benchmarks/lmeval/tasks/`; "
        "their prompt fields are checked against the installed harness's own YAMLs before every run).",
        "The machine is shared: load averages at the start of each run are listed; timings are only comparable "
        "within one report.", ""]
    for label, m in report["models"].items():
        lines += [f"## {label}: `{m['source']}`", ""]
        rec = _pruning_record(m["folder"])
        if rec:
            cal = rec.get("calibration") or {}
            lines += [f"Pruned by prunelab: {rec['config']['method']}, sparsity {rec['summary']['sparsity']:.4f} of the "
                      f"decoder-block Linear weights, calibration {cal.get('samples')} x {cal.get('seqlen')} tokens of "
                      f"{cal.get('corpus')} (seed {cal.get('seed')}); prune {rec.get('prune_seconds', 0):.0f}s.", ""]
        if not m.get("harness_meta"):  # --prunelab-only: prunelab's numbers alone
            lines += ["lm-evaluation-harness was not run on this model (`--prunelab-only`).", "",
                      "| task | items | prunelab acc | prunelab acc_norm | prunelab s | harness tokens | prunelab tok/s |",
                      "|---|---|---|---|---|---|---|"]
            for name, row in m["rows"].items():
                o = row["ours"]
                norm = f"{_pts(o['acc_norm'])} ± {_pts(o['acc_norm_stderr'])}" if "acc_norm" in o else "-"
                lines.append(f"| {name} | {o['items']} | {_pts(o['acc'])} ± {_pts(o['acc_stderr'])} | {norm} "
                             f"| {o['wall_seconds']:.1f} | {o['harness_tokens']} "
                             f"| {o['harness_tokens'] / o['wall_seconds']:.0f} |")
            loads = "; ".join(f"{name} {r['ours'].get('loadavg_before') or 'n/a'}" for name, r in m["rows"].items())
            lines += ["", f"Load averages at each task's start: {loads}.", ""]
            continue
        lines += ["| task | items | prunelab acc | lm-eval acc | Δ (pts) | prunelab acc_norm | lm-eval acc_norm | Δ (pts) "
                  "| max \\|Δll\\| | decisions differing (acc / acc_norm) | prunelab s | lm-eval s | harness tokens "
                  "| prunelab tok/s | lm-eval tok/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        tot = {"ours_s": 0.0, "theirs_s": 0.0, "tokens": 0}
        for name, row in m["rows"].items():
            o, t, a = row["ours"], row["theirs"], row["agreement"]
            norm = "acc_norm" in o
            tokens = o["harness_tokens"]
            tot["ours_s"] += o["wall_seconds"]
            tot["theirs_s"] += t["seconds"]
            tot["tokens"] += tokens
            cells = [name, str(o["items"]), f"{_pts(o['acc'])} ± {_pts(o['acc_stderr'])}", _pts(t["acc"]),
                     f"{100 * (o['acc'] - t['acc']):+.2f}"]
            if norm:
                cells += [f"{_pts(o['acc_norm'])} ± {_pts(o['acc_norm_stderr'])}", _pts(t["acc_norm"]),
                          f"{100 * (o['acc_norm'] - t['acc_norm']):+.2f}"]
            else:
                cells += ["-", "-", "-"]
            cells += [f"{a['max_abs_diff']:.1e}", f"{a['acc_differs']} / {a['acc_norm_differs'] if norm else '-'}",
                      f"{o['wall_seconds']:.1f}", f"{t['seconds']:.1f}", str(tokens),
                      f"{tokens / o['wall_seconds']:.0f}", f"{tokens / t['seconds']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(f"| **all** | | | | | | | | | | {tot['ours_s']:.1f} | {tot['theirs_s']:.1f} | {tot['tokens']} "
                     f"| {tot['tokens'] / tot['ours_s']:.0f} | {tot['tokens'] / tot['theirs_s']:.0f} |")
        lam = m["rows"].get("lambada")
        if lam:
            lines += ["", f"LAMBADA perplexity (of the final word, per item): prunelab "
                          f"{lam['ours']['perplexity']:.3f} ± {lam['ours']['perplexity_stderr']:.3f} (delta method), "
                          f"lm-eval {lam['theirs']['perplexity']:.3f} ± {lam['theirs'].get('perplexity_stderr', float('nan')):.3f} "
                          f"(bootstrap, {report['bootstrap_iters']} resamples)."]
        # each tool's load averages (1, 5, 15 min) as each task started; older records lack the harness's
        loads = "; ".join(f"{name} {r['ours'].get('loadavg_before') or 'n/a'} / {r['theirs'].get('loadavg_before') or 'n/a'}"
                          for name, r in m["rows"].items())
        lines += ["", f"Load averages at each task's start, prunelab / lm-eval: {loads}; lm-eval model load "
                      f"{m['harness_load_seconds']:.1f}s not included above.", ""]
    labels = list(report["models"])
    if len(labels) > 1:
        base = labels[0]
        lines += [f"## What pruning cost per task ({', '.join(labels[1:])} vs {base})", "",
                  "| task | metric | " + " | ".join(f"{l} prunelab | {l} lm-eval" for l in labels) + " |",
                  "|---|---|" + "---|---|" * len(labels)]
        for name in report["models"][base]["rows"]:
            for metric in ("acc", "acc_norm", "perplexity"):
                if metric not in report["models"][base]["rows"][name]["ours"]:
                    continue
                cells = []
                for l in labels:
                    row = report["models"][l]["rows"].get(name)
                    if row is None:
                        cells += ["-", "-"]
                        continue
                    fmt = (lambda v: f"{v:.2f}") if metric == "perplexity" else _pts
                    theirs = row["theirs"].get(metric) if row["theirs"] else None
                    cells += [fmt(row["ours"][metric]), fmt(theirs) if theirs is not None else "-"]
                lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    est = report.get("full_estimate")
    if est:
        lines += ["## Full-dataset estimate (dense model, from the rates measured above)", "",
                  "Tokens are what each tool feeds the model: the harness runs every (context, choice) as its own "
                  "sequence (identical inputs merged); prunelab runs a shared context once per item. "
                  "Times = tokens / the tool's measured tokens per second on that task (its own token count), so "
                  "they carry the load of the machine during the measurement (load averages above; 2 cores).", "",
                  "| task | items | harness tokens | prunelab tokens | prunelab est. min | lm-eval est. min |",
                  "|---|---|---|---|---|---|"]
        tot = [0, 0, 0.0, 0.0]
        for name, e in est["tasks"].items():
            lines.append(f"| {name} | {e['items']} | {e['harness_tokens']} | {e['prunelab_tokens']} "
                         f"| {e['prunelab_minutes']:.1f} | {e['harness_minutes']:.1f} |")
            tot = [tot[0] + e["harness_tokens"], tot[1] + e["prunelab_tokens"], tot[2] + e["prunelab_minutes"],
                   tot[3] + e["harness_minutes"]]
        lines.append(f"| **all** | | {tot[0]} | {tot[1]} | {tot[2]:.0f} | {tot[3]:.0f} |")
        lines.append("")
    if all(m.get("samples") for m in report["models"].values()):
        first = next(iter(report["models"].values()))["samples"]
        lines += [f"## Generated samples (greedy, {first[0]['max_new_tokens']} new tokens, {first[0]['prompt_set']})", "",
                  "| prompt | " + " | ".join(report["models"]) + " |", "|---|" + "---|" * len(report["models"])]
        for k, sample in enumerate(first):
            cells = [m["samples"][k]["continuation"].replace("\n", " ⏎ ").replace("|", "\\|")
                     for m in report["models"].values()]
            lines.append(f"| {sample['prompt']} | " + " | ".join(cells) + " |")
        lines.append("")
    sc = report.get("strings_check")
    if sc:
        lines += ["## Request strings: every item, harness vs prunelab", "",
                  "| task | items (prunelab / harness) | identical (context, continuation) lists | identical gold |",
                  "|---|---|---|---|"]
        for name, c in sc.items():
            lines.append(f"| {name} | {c['items']} / {c['harness_items']} | {c['requests_equal']} | {c['golds_equal']} |")
        lines.append("")
    lines += [NOTES, "Commands: " + "; ".join(f"`{c}`" for c in report["commands"]), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="LABEL=SOURCE (repeatable; default dense=smollm2-135m)")
    ap.add_argument("--prunelab-only", action="append", default=[], metavar="LABEL",
                    help="score this --model with prunelab only (repeatable), e.g. to add a model to the pruning-cost "
                         "table without the harness's run time")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--limit", type=int, help="first N items per task (omit for the full datasets)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-context-sharing", action="store_true")
    ap.add_argument("--dtype", default="float32", help="both tools' model dtype (log-softmax stays float32)")
    ap.add_argument("--lmeval-python", default="/tmp/lmeval/venv/bin/python")
    ap.add_argument("--bootstrap-iters", type=int, default=100000)
    ap.add_argument("--work", default="/tmp/lmeval/work")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zeroshot_vs_lmeval.md"))
    ap.add_argument("--no-estimate", action="store_true", help="skip the full-dataset token counts")
    ap.add_argument("--no-strings-check", action="store_true", help="skip the all-items request-string check")
    ap.add_argument("--render-from", help="re-render an earlier report JSON (adds the strings check unless skipped)")
    args = ap.parse_args(argv)
    if args.render_from:
        report = json.loads(Path(args.render_from).read_text())
        if not args.no_strings_check and "strings_check" not in report:
            report["strings_check"] = strings_check(args.lmeval_python, report["tasks"], Path(args.work) / "strings")
        out = Path(args.out)
        out.write_text(render(report))
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        print(render(report))
        return 0

    import torch
    import transformers

    from prunelab.eval.tasks import resolve_task_names
    from prunelab.record import host_description

    tasks = resolve_task_names(args.tasks)
    models = dict(m.split("=", 1) for m in (args.model or ["dense=smollm2-135m"]))
    if set(args.prunelab_only) - set(models):
        ap.error(f"--prunelab-only names no --model label: {sorted(set(args.prunelab_only) - set(models))}")
    share = False if args.no_context_sharing else None
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "limit": args.limit, "batch_size": args.batch_size,
              "tasks": tasks, "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "bootstrap_iters": args.bootstrap_iters,
              "host": f"{platform.machine()}, {host_description().get('cpu_count')} CPUs", "models": {},
              "commands": ["python benchmarks/lmeval/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])]}
    for label, source in models.items():
        folder = model_folder(source)
        ours = run_prunelab(source, tasks, args.limit, args.batch_size, share, args.dtype,
                            keep=Path(args.work) / label / "prunelab")
        if label in args.prunelab_only:
            rows = {name: {"ours": {k: v for k, v in o.items() if k != "details"}, "theirs": None, "agreement": None}
                    for name, o in ours["tasks"].items()}
            report["models"][label] = {"source": source, "folder": folder, "rows": rows, "samples": ours["samples"],
                                       "harness_meta": None}
            continue
        theirs = run_harness(args.lmeval_python, folder, tasks, args.limit, args.batch_size, Path(args.work) / label,
                             args.bootstrap_iters, args.dtype)
        rows = {}
        for name in tasks:
            o, t = ours["tasks"][name], theirs["tasks"][name]
            rows[name] = {"ours": {k: v for k, v in o.items() if k != "details"},
                          "theirs": {**t["metrics"], "seconds": t["seconds"], "items": t["n_items"],
                                     "loadavg_before": t.get("loadavg_before")},
                          "agreement": item_agreement(o, t)}
        first = next(iter(theirs["tasks"].values()))
        report["harness_version"] = first["meta"].get("lm_eval") or "0.4.13"
        report["models"][label] = {"source": source, "folder": folder, "rows": rows,
                                   "harness_load_seconds": first["meta"]["load_seconds"],
                                   "samples": ours["samples"],
                                   "harness_meta": first["meta"]}
    compared = [(l, m) for l, m in report["models"].items() if m["harness_meta"]]
    if not args.no_estimate and compared:
        label, m = compared[0]
        counts = full_token_counts(m["source"], tasks)
        for name, c in counts.items():
            row = m["rows"][name]
            ours_rate = row["ours"]["tokens"] / row["ours"]["wall_seconds"]  # its own (shared) tokens
            theirs_rate = row["ours"]["harness_tokens"] / row["theirs"]["seconds"]
            c["prunelab_minutes"] = c["prunelab_tokens"] / ours_rate / 60
            c["harness_minutes"] = c["harness_tokens"] / theirs_rate / 60
        report["full_estimate"] = {"model": label, "tasks": counts}
    if not args.no_strings_check:
        report["strings_check"] = strings_check(args.lmeval_python, tasks, Path(args.work) / "strings")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report))
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
