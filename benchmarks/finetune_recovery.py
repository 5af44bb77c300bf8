"""Benchmark: recovery fine-tuning and iterative pruning on the embedded model, one fine-tuning budget for all rows.

Rows (issue 18): one-shot magnitude 50% without and with full fine-tuning; iterative magnitude 50% with each
schedule (constant, linear, exponential, cubic); Wanda 50% and SparseGPT 50% + LoRA (SparseGPT both ways of
keeping the mask: merge-then-remask and masked delta); one-shot SparseGPT 50% without fine-tuning as the target's
reference; then the best two fine-tuned configurations of different pruning methods (lowest held-out C4 loss at
50%, never the test set) at 70%.

Protocol: calibration 64 x 512 tokens of C4 (seed 0); fine-tuning on the local C4 sample's training documents (5%
of documents held out for validation, recorded), so nothing overlaps the evaluation data; WikiText-2 test perplexity
at seqlen 512 over the first 128 windows (benchmarks/core_methods.py's protocol) and the nine zero-shot tasks on the
first --limit items each, in one `prunelab eval` per row; sparsity counted from the saved weights.

Every step is a `prunelab` process (prune, finetune, iterative, eval), so peak RSS is per process, and each row's
outputs stay under --work: rerunning the same command skips finished rows and resumes an interrupted fine-tuning
from its checkpoint. With --lock FILE each row holds that lock (the shared machine's heavy-job lock) while it runs.

    python benchmarks/finetune_recovery.py --lock /tmp/prunelab-heavy.lock
    python benchmarks/finetune_recovery.py --only iter-magnitude-0.5-cubic   # one row
    python benchmarks/finetune_recovery.py --only oneshot-wanda-0.7-lora      # a 70% row before the 50% table is done
    python benchmarks/finetune_recovery.py --iter-final-share 0.5 --only iter-magnitude-0.5-cubic-final50
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CALIB = ["--calib", "c4", "--calib-samples", "64", "--calib-seqlen", "512", "--seed", "0"]
EVAL = ["--data", "wikitext2", "--split", "test", "--seqlen", "512", "--max-windows", "128"]
SCHEDULES = ("constant", "linear", "exponential", "cubic")


def rows_at_50(args) -> list[str]:
    """The 50% rows; iterative rows made with --iter-final-share F end in -finalNN (NN = 100·F), so rows of both
    budget splits can stand in one table."""
    final = f"-final{round(100 * args.iter_final_share)}" if args.iter_final_share else ""
    return ["oneshot-magnitude-0.5", "oneshot-sparsegpt-0.5", "oneshot-magnitude-0.5-ft",
            *[f"iter-magnitude-0.5-{s}{final}" for s in SCHEDULES],
            "oneshot-wanda-0.5-lora", "oneshot-sparsegpt-0.5-lora", "oneshot-sparsegpt-0.5-lora_masked"]


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


@contextmanager
def held(lock: str | None):
    if lock is None:
        yield
        return
    with open(lock, "a") as fh:
        print(f"waiting for {lock}", flush=True)
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.work / "commands.log"
        self.cli = [sys.executable, "-m", "prunelab.cli"]

    def training(self, lora: bool, merge: str = "remask") -> list[str]:
        a = self.args
        flags = ["--train", "c4", "--tokens", str(a.tokens), "--lr", str(a.lora_lr if lora else a.lr),
                 "--batch", str(a.batch), "--micro-batch", str(a.micro_batch), "--seqlen", str(a.seqlen),
                 "--heldout-windows", str(a.heldout_windows), "--checkpoint-minutes", "3"]
        distill = lora_alpha(a) if lora else a.distill
        if distill:  # the teacher: the dense model (iterative: as loaded; finetune: named by the pruned record)
            flags += ["--distill", str(distill)]
        if lora:
            flags += ["--lora", str(a.lora), "--lora-merge", merge]
        return flags

    def scope(self, method: str) -> list[str]:
        return ["--scope", self.args.magnitude_scope] if method == "magnitude" and self.args.magnitude_scope else []

    def pruned(self, method: str, level: str) -> Path:
        """The one-shot pruned model, made once and shared by the rows that start from it."""
        out = self.work / f"prune-{method}-{level}"
        if not out.exists():
            run(self.cli + ["prune", "--method", method, "--sparsity", level, *CALIB, *self.scope(method),
                            "--out", str(out), "--quiet"], self.log)
        return out

    def row(self, name: str) -> tuple[Path, dict]:
        """Make the row's model (if not there yet); returns its folder and how it was made."""
        kind, method, level, *rest = name.split("-")
        out = self.work / name
        if kind == "oneshot":
            if rest:  # oneshot-METHOD-LEVEL-ft | -lora | -lora_masked
                how = rest[0]
                lora = how.startswith("lora")
                merge = "masked-delta" if how == "lora_masked" else "remask"
                if not out.exists():
                    run(self.cli + ["finetune", str(self.pruned(method, level)), *self.training(lora, merge),
                                    "--out", str(out), "--quiet"], self.log)
                return out, {"how": f"one-shot {method}, then " + (f"LoRA r={self.args.lora} ({merge})" if lora
                                                                     else "full fine-tuning")}
            return self.pruned(method, level), {"how": f"one-shot {method}, no fine-tuning"}
        schedule, *variant = rest  # iter-METHOD-LEVEL-SCHEDULE[-finalNN]
        final = int(variant[0].removeprefix("final")) / 100 if variant else None
        if not out.exists():
            extra = CALIB if method != "magnitude" else []
            extra += ["--final-share", str(final)] if final else []
            run(self.cli + ["iterative", "--method", method, "--target", level, "--schedule", schedule,
                            "--steps", str(self.args.iter_steps), *extra, *self.scope(method), *self.training(False),
                            "--out", str(out),
                            "--quiet"], self.log)
        split = f"{final:.0%} of the budget after the last step" if final else "the budget split evenly"
        return out, {"how": f"iterative {method}, {schedule} schedule, {self.args.iter_steps} steps, full "
                            f"fine-tuning, {split}"}

    def evaluate(self, model: Path, name: str) -> dict:
        path = self.work / f"{name}.eval.json"
        if not path.exists():
            run(self.cli + ["eval", str(model), *EVAL, "--tasks", "all", "--limit", str(self.args.limit),
                            "--json", str(path), "--quiet"], self.log)
        return json.loads(path.read_text())


def command_line(argv: list[str]) -> list[str]:
    """The arguments that decide the table: without --only, --work and --lock (which rows, where, which lock)."""
    local = ("--only", "--work", "--lock")
    return [a for i, a in enumerate(argv) if not (a.startswith(local) or (i and argv[i - 1] in local))]


def summarize(name: str, info: dict, model: Path, result: dict) -> dict:
    record = json.loads((model / "prunelab.json").read_text()) if (model / "prunelab.json").is_file() else {}
    ft = record.get("finetune") or {}
    tasks = result.get("tasks") or {}
    row = {"row": name, **info, "wikitext2_ppl": result["ppl"], "windows": result["windows"],
           "sparsity_measured": result.get("measured_sparsity"),
           "zeros": (record.get("summary") or {}).get("prunable_zeros"),
           "lambada_acc": tasks.get("lambada", {}).get("acc"), "lambada_ppl": tasks.get("lambada", {}).get("perplexity"),
           "hellaswag_acc": tasks.get("hellaswag", {}).get("acc"),
           "zeroshot_mean_acc": (sum(t["acc"] for t in tasks.values()) / len(tasks)) if tasks else None,
           "tasks": {k: {m: v.get(m) for m in ("acc", "acc_norm", "perplexity", "items")} for k, v in tasks.items()}}
    if ft:
        heldout = ft.get("heldout") or [h for s in record["iterative"]["steps_record"] for h in s["finetune"]["heldout"]]
        row.update({"tokens": ft["tokens"], "optimizer_steps": ft["optimizer_steps"],
                    "train_seconds": ft["train_seconds"], "train_cpu_minutes": ft["train_cpu_seconds"] / 60,
                    "tokens_per_second": ft["tokens_per_second"], "peak_rss_mb": record["peak_rss_bytes"] / 2**20,
                    "heldout_loss_start": heldout[0]["loss"], "heldout_loss_end": heldout[-1]["loss"],
                    "trainable_params": ft["trainable_params"], "adamw_state_mb": ft["adamw_state_bytes"] / 2**20,
                    "loadavg_start_end": record.get("loadavg_start_end"), "lora_merge": ft.get("lora_merge"),
                    "zeros_before_finetune": ft.get("zeros_before"), "mask_kept_exactly": ft.get("mask_kept_exactly")})
        if "iterative" in record:
            row["steps"] = [{"target": s["target"], "sparsity": s["sparsity"],
                             "sparsity_after_finetune": s["sparsity_after_finetune"],
                             "heldout_ppl": [round(h["ppl"], 3) for h in s["finetune"]["heldout"]]}
                            for s in record["iterative"]["steps_record"]]
    return row


def targets(results: dict) -> list[str]:
    """Issue 18's two targets, judged from the rows that exist (a missing row leaves its target open)."""
    ppl = {r["row"]: r["wikitext2_ppl"] for r in results["rows"]}
    dense = (results.get("dense") or {}).get("wikitext2_ppl")
    iterative = {n: v for n, v in ppl.items() if n.startswith("iter-magnitude-0.5-")}
    lora = {n: v for n, v in ppl.items() if n.startswith("oneshot-sparsegpt-0.5-lora")}
    checks = []
    if iterative and "oneshot-sparsegpt-0.5" in ppl:
        best = min(iterative, key=iterative.get)
        bar = ppl["oneshot-sparsegpt-0.5"]
        checks.append(f"| iterative magnitude 50% + fine-tuning < one-shot SparseGPT 50% | "
                      f"{best}: {iterative[best]:.2f} | < {bar:.2f} | {'yes' if iterative[best] < bar else 'NO'} |")
    if lora and dense:
        best = min(lora, key=lora.get)
        checks.append(f"| SparseGPT 50% + LoRA <= 1.5 x dense | {best}: {lora[best]:.2f} | <= {1.5 * dense:.2f} | "
                      f"{'yes' if lora[best] <= 1.5 * dense else 'NO'} |")
    if not checks:
        return []
    return ["", "| target | best row | bound | met |", "|---|---|---|---|", *checks]


def markdown(results: dict, args) -> str:
    rows = results["rows"]
    meta = results["meta"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = ["# Recovery fine-tuning and iterative pruning: smollm2-135m", "",
             f"Budget per fine-tuned row: {args.tokens:,} training tokens of C4 ({args.batch} x {args.seqlen} tokens "
             f"per optimizer step); full fine-tuning lr {args.lr}, LoRA r={args.lora} lr {args.lora_lr}; iterative "
             f"runs: {args.iter_steps} pruning steps, the budget split evenly over them (rows ending -finalNN: NN% "
             "of it after the last step, the rest evenly over the others; `--iter-final-share`). "
             + (f"Magnitude pruning ranks weights per {args.magnitude_scope}. " if args.magnitude_scope else "")
             + loss_description(args)
             + "Evaluation: "
             f"{meta['eval']}; zero-shot: the 9 tasks, first {args.limit} items each. Dense: "
             f"{fmt((results.get('dense') or {}).get('wikitext2_ppl'), '.2f')} WikiText-2 ppl.", "",
             "| row | how | WikiText-2 ppl | LAMBADA acc | LAMBADA ppl | zero-shot mean acc | sparsity (exact) | "
             "train tokens | train CPU min | tokens/s | peak RSS MB | "
             "held-out C4 loss start → end (iterative: after the first pruning step → end) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in [results.get("dense")] + sorted(rows, key=lambda r: display_order(r["row"])):
        if not r:
            continue
        held = (f"{r['heldout_loss_start']:.3f} → {r['heldout_loss_end']:.3f}" if r.get("heldout_loss_start") else "-")
        lines.append(f"| {r['row']} | {r['how']} | {fmt(r['wikitext2_ppl'], '.2f')} | "
                     f"{fmt(100 * r['lambada_acc'] if r.get('lambada_acc') is not None else None, '.1f')} | "
                     f"{fmt(r.get('lambada_ppl'), '.1f')} | "
                     f"{fmt(100 * r['zeroshot_mean_acc'] if r.get('zeroshot_mean_acc') is not None else None, '.2f')} | "
                     f"{fmt(r.get('sparsity_measured'), '.6f')} | {fmt(r.get('tokens'), ',')} | "
                     f"{fmt(r.get('train_cpu_minutes'), '.1f')} | {fmt(r.get('tokens_per_second'), '.0f')} | "
                     f"{fmt(r.get('peak_rss_mb'), '.0f')} | {held} |")
    made = {r["row"] for r in rows} | ({"dense"} if results.get("dense") else set())
    missing = [n for n in ["dense", *rows_at_50(args)] if n not in made]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + "; then the best two fine-tuned rows at 70%."]
    elif not results.get("best_two_at_50"):
        lines += ["", "Not measured yet: the best two fine-tuned rows at 70%."]
    if results.get("best_two_at_50"):
        lines += ["", "70% rows: the two best fine-tuned configurations at 50% of different pruning methods by "
                  "held-out C4 loss: " + ", ".join(results["best_two_at_50"]) + "."]
    reused = sorted({r["reused_from"] for r in [results.get("dense") or {}] + rows if r.get("reused_from")})
    if reused:
        lines += ["", "Rows without fine-tuning (dense, one-shot) were measured for "
                  + ", ".join(f"`{n}.md`" for n in reused)
                  + " with the same pruning and evaluation and are taken from there (`--reuse-from`)."]
    lines += targets(results)
    lines += ["", f"Host: {meta['host']['cpu_count']} CPUs, torch {meta['versions']['torch']}; timings were taken on a "
              "machine shared with other jobs (load averages per row in the JSON), so CPU minutes and tokens/s are "
              "upper and lower bounds of a quiet machine's.", "",
              f"Reproduce: `python benchmarks/finetune_recovery.py {' '.join(meta['argv'])}`", ""]
    return "\n".join(lines)


def display_order(name: str) -> tuple:
    """Table order: by level, then one-shot, one-shot + full FT, iterative (schedules in order, even split first),
    LoRA rows; methods alphabetically within a kind."""
    kind, method, level, *rest = name.split("-")
    if kind == "iter":
        rank = 2 + SCHEDULES.index(rest[0]) / 10 + (0.05 if len(rest) > 1 else 0)
    else:
        rank = {(): 0, ("ft",): 1}.get(tuple(rest), 3)
    return float(level), rank, method, name


def loss_description(args) -> str:
    """The fine-tuning loss of the table's rows (LoRA rows may have their own, --lora-distill)."""
    def loss(alpha):
        return (f"distillation from the dense model, (1 - {alpha}) x CE + {alpha} x KL(dense || pruned) per token "
                "(one teacher forward per step on top)" if alpha else "cross-entropy on the training text")
    if lora_alpha(args) == args.distill:
        return f"Loss: {loss(args.distill)}. " if args.distill else ""
    return f"Loss of full fine-tuning: {loss(args.distill)}; of LoRA: {loss(lora_alpha(args))}. "


def lora_alpha(args) -> float:
    """The LoRA rows' distillation weight: --lora-distill when given, else --distill's."""
    return args.distill if args.lora_distill is None else args.lora_distill


def untrained(name: str) -> bool:
    """Rows whose model is not fine-tuned: the dense model and one-shot pruning without recovery."""
    return name == "dense" or (name.startswith("oneshot-") and name.count("-") == 2)


def reuse(results: dict, args) -> None:
    """Copy the untrained rows of results/NAME.json into ``results`` (marked ``reused_from``) if it evaluated the
    same way; rows already here are kept."""
    source = json.loads((RESULTS / f"{args.reuse_from}.json").read_text())
    if source["settings"].get("limit") != args.limit:
        sys.exit(f"--reuse-from {args.reuse_from}: its rows were evaluated with --limit "
                 f"{source['settings'].get('limit')}, this table with {args.limit}")
    from prunelab.record import host_description
    theirs, ours = source["meta"]["host"].get("torch_threads"), host_description()["torch_threads"]
    if theirs != ours:  # float32 sums split by thread count: another one-shot model (rounding_noise.md)
        sys.exit(f"--reuse-from {args.reuse_from}: its one-shot models were pruned on {theirs} torch threads, this "
                 f"run has {ours}, so its own one-shot models differ from the reused rows; run with "
                 f"OMP_NUM_THREADS={theirs} or without --reuse-from")
    have = {r["row"] for r in results["rows"]}
    if not results.get("dense") and source.get("dense"):
        results["dense"] = {**source["dense"], "reused_from": args.reuse_from}
    same_magnitude = source["settings"].get("magnitude_scope") == args.magnitude_scope
    results["rows"] += [{**r, "reused_from": args.reuse_from} for r in source["rows"]
                        if untrained(r["row"]) and r["row"] not in have
                        and (same_magnitude or r["row"].split("-")[1] != "magnitude")]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=65536,
                        help="fine-tuning tokens per row (default 65536: about 30 CPU minutes of full fine-tuning here)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora", type=int, default=16)
    parser.add_argument("--distill", type=float, default=0.0, help="fine-tune with --distill ALPHA (dense teacher)")
    parser.add_argument("--lora-distill", type=float, help="the LoRA rows' --distill ALPHA (default: --distill's; "
                        "0: plain cross-entropy)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--iter-steps", type=int, default=4)
    parser.add_argument("--iter-final-share", type=float, metavar="F", help="iterative rows spend this fraction of "
                        "the budget after the last pruning step (rows named ...-finalNN; default: an even split)")
    parser.add_argument("--magnitude-scope", choices=["layer", "row"], help="where magnitude pruning ranks weights "
                        "(one-shot and iterative rows; default: the method's, layer)")
    parser.add_argument("--heldout-windows", type=int, default=8, help="held-out C4 windows per validation")
    parser.add_argument("--limit", type=int, default=100, help="zero-shot items per task")
    parser.add_argument("--work", help="models and evaluations of every row (default runs/NAME: a table made with "
                        "other settings never reuses this one's models)")
    parser.add_argument("--name", default="finetune_recovery")
    parser.add_argument("--lock", help="hold this lock file while a row runs (e.g. /tmp/prunelab-heavy.lock)")
    parser.add_argument("--only", help="comma list of row names")
    parser.add_argument("--reuse-from", metavar="NAME", help="take the rows without fine-tuning (dense, one-shot) "
                        "from results/NAME.json when it used the same evaluation (--limit): they do not depend on "
                        "the fine-tuning settings, so a table with another recipe need not measure them again")
    args = parser.parse_args()
    args.work = args.work or f"runs/{args.name}"

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    results = json.loads(out.read_text()) if out.exists() else {"rows": []}
    settings = {k: v for k, v in vars(args).items()  # iter_final_share: in the iterative rows' names
                if k not in ("work", "lock", "only", "name", "reuse_from", "iter_final_share")}
    for key in ("distill", "magnitude_scope"):  # the tables made before these options existed keep their settings
        if not settings[key]:
            del settings[key]
    if settings["lora_distill"] is None:  # 0 (plain loss for LoRA) is a setting; unset is not
        del settings["lora_distill"]
    if results.get("settings") not in (None, settings):
        sys.exit(f"{out} holds rows made with other settings ({results['settings']}); use another --name")
    results["settings"] = settings
    from prunelab.record import host_description, package_versions
    results["meta"] = {"eval": "WikiText-2 test, seqlen 512, first 128 windows", "calibration": "c4 64 x 512 seed 0",
                       "host": host_description(), "versions": package_versions(),
                       "argv": command_line(sys.argv[1:])}
    bench = Bench(args)
    if args.reuse_from:
        reuse(results, args)

    @contextmanager
    def synced():
        """Hold the results file's lock and take in rows other runners wrote since (runners with disjoint --only
        lists may share one results file)."""
        with open(out.with_suffix(".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            on_disk = json.loads(out.read_text()) if out.exists() else {"rows": []}
            ours = {r["row"] for r in results["rows"]}
            results["rows"] += [r for r in on_disk["rows"] if r["row"] not in ours]
            results["dense"] = results.get("dense") or on_disk.get("dense")
            yield

    def save():
        out.write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{args.name}.md").write_text(markdown(results, args))

    def finished(name: str) -> dict | None:
        with synced():
            return results.get("dense") if name == "dense" else next(
                (r for r in results["rows"] if r["row"] == name), None)

    def do(name: str, make) -> dict | None:
        if (row := finished(name)) is not None or (args.only and name not in args.only.split(",")):
            return row
        with held(args.lock):
            start, load = time.time(), loadavg()
            model, info = make()
            row = summarize(name, info, model, bench.evaluate(model, name))
            row.update({"row_wall_seconds": time.time() - start, "loadavg_row_start_end": [load, loadavg()]})
        with synced():
            if name == "dense":
                results["dense"] = row
            else:
                results["rows"].append(row)
            save()
        print(json.dumps({k: row.get(k) for k in ("row", "wikitext2_ppl", "sparsity_measured", "lambada_acc",
                                                   "zeroshot_mean_acc", "train_cpu_minutes")}), flush=True)
        return row

    do("dense", lambda: (Path("smollm2-135m"), {"how": "dense"}))
    at_50 = rows_at_50(args)
    for name in at_50:
        do(name, lambda name=name: bench.row(name))
    # the best two fine-tuned configurations at 50% (of different pruning methods), by held-out C4 loss (not the
    # test set), again at 70%
    tuned = [r for r in results["rows"] if r["row"] in at_50 and r.get("heldout_loss_end") is not None]
    if {n for n in at_50 if not n.endswith("0.5")} <= {r["row"] for r in tuned}:
        # one row per pruning method (oneshot-sparsegpt, oneshot-wanda, iter-magnitude, ...): the merge variants of
        # one method are not two configurations
        per_method: dict[str, dict] = {}
        for r in sorted(tuned, key=lambda r: r["heldout_loss_end"]):
            per_method.setdefault(r["row"].split("-0.5")[0], r)
        best = list(per_method.values())[:2]
        results["best_two_at_50"] = [r["row"] for r in best]
        for r in best:
            name = r["row"].replace("-0.5", "-0.7")
            if name.startswith("oneshot"):
                do(name.rsplit("-", 1)[0], lambda n=name.rsplit("-", 1)[0]: bench.row(n))  # 70% without fine-tuning
            do(name, lambda name=name: bench.row(name))
    # 70% rows named in --only run even before every 50% row is in (their choice is still the table's: the page
    # lists best_two_at_50 once the 50% rows are complete)
    for name in (args.only or "").split(","):
        if "-0.7" in name:
            do(name, lambda name=name: bench.row(name))
    with synced():
        save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
