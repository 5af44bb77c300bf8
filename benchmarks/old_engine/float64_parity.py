"""Did the engine work of issue 16 change what SparseGPT computes? The engine from before it, run in float64.

In float32 that question has no sharp answer: reordering the same calibration sequences alone moves SparseGPT 50%'s
perplexity by up to 2.8% (benchmarks/results/rounding_noise.md), more than any kernel change. In float64 the
current engine gives 65.2284756 for the same sequences in four orders (the other two within 1.2e-7). This script
checks out the engine from before issue 16 (commit 1ec99dc: one sequence per forward, full XᵀX products, explicit
inverse then Cholesky in the solve, sdpa attention) into a git worktree, applies float64.patch (the few lines that
let that engine keep float64 statistics and solve float64 weights, as the current one does), runs the same
protocol (64 x 512 C4 seed 0, identity order; WikiText-2 test, seqlen 512, first 128 windows) and compares.

    python benchmarks/old_engine/float64_parity.py [--worktree DIR]
    python benchmarks/old_engine/float64_parity.py --dtype float32   # the same, both engines in float32
Results: benchmarks/results/old_engine_float64.{json,md} (one run per dtype)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OLD_COMMIT = "1ec99dcf79d1f12dca44dd8905014170da4fc302"  # parent of 66c6bcc, the first engine commit of issue 16
RUNS = RESULTS / "old_engine_float64.json"
sys.path.insert(0, str(ROOT / "benchmarks"))
from measure import cpu_description, git_commit, write_markdown  # noqa: E402
from rounding_noise import FLOAT64, _engine, ordered_calibration  # noqa: E402  (its protocol and row names)


def prune_and_evaluate(dtype: str) -> dict:
    """The protocol on whatever prunelab is importable (the old worktree's, through PYTHONPATH)."""
    import torch

    import prunelab
    from prunelab.algorithms import get_algorithm
    from prunelab.api import evaluate
    from prunelab.engine import prune_model
    from prunelab.models.loading import load_model
    from prunelab.patterns import Pattern

    model, tokenizer, _ = load_model("smollm2-135m", dtype)
    ids, _, info = ordered_calibration(tokenizer, "identity")
    started = time.perf_counter()
    prune_model(model, get_algorithm("sparsegpt"), Pattern(0.5), ids, progress=True)
    seconds = time.perf_counter() - started
    ev = evaluate(model, tokenizer=tokenizer, data="wikitext2", seqlen=512, max_windows=128, progress=True)
    return {"ppl": ev["ppl"], "prune_seconds": seconds, "eval_seconds": time.perf_counter() - started - seconds,
            "dtype": str(next(model.parameters()).dtype), "threads": torch.get_num_threads(),
            "calibration_tokens_sha256": info["tokens_sha256"], "module": prunelab.__file__}


def prepare(worktree: Path) -> None:
    if not (worktree / "src" / "prunelab").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), OLD_COMMIT], check=True)
    patched = subprocess.run(["git", "-C", str(worktree), "diff", "--quiet"]).returncode != 0
    if not patched:
        subprocess.run(["git", "-C", str(worktree), "apply", str(HERE / "float64.patch")], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worktree", type=Path, default=Path(os.environ.get("WORK", "/tmp")) / "prunelab-before-16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="float32: the old engine as it was (the patch changes nothing for float32 models), for "
                             "the single-run float32 comparison")
    parser.add_argument("--page-only", action="store_true", help="rewrite the page from the stored runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.page_only:
        write_page(stored_runs())
        return 0
    if args.child:  # inside the old engine's environment: print one JSON line
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(prune_and_evaluate(args.dtype)))
        return 0
    prepare(args.worktree)
    env = dict(os.environ, PYTHONPATH=str(args.worktree / "src"))
    proc = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads), "--dtype", args.dtype],
                          env=env, stdout=subprocess.PIPE, text=True, check=True)
    old = json.loads(proc.stdout.strip().splitlines()[-1])
    if not old["module"].startswith(str(args.worktree)):
        raise SystemExit(f"the child imported prunelab from {old['module']}, not from the old worktree")
    old |= {"engine": f"before issue 16 ({OLD_COMMIT[:7]}) + float64.patch", "cpu": cpu_description(),
            "script_commit": git_commit()}
    runs = stored_runs()
    runs[args.dtype] = old
    RUNS.write_text(json.dumps({"runs": runs}, indent=1))
    write_page(runs)
    return 0


def stored_runs() -> dict:
    stored = json.loads(RUNS.read_text()) if RUNS.is_file() else {}
    return stored.get("runs", {"float64": stored["old"]} if "old" in stored else {})  # first layout: float64 only


def write_page(runs: dict) -> None:
    lines = ["# SparseGPT 50%: the engine from before issue 16 against the current one, in float64 and float32", "",
             "Same protocol (64 x 512 C4 seed 0, identity order; WikiText-2 test, seqlen 512, first 128 windows). "
             "The current engine's rows are rounding_noise.json's identity-order rows on the same CPU and thread "
             "count.", "",
             "| dtype | engine | commit | WikiText-2 ppl | relative to before | prune s | eval s |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for dtype, run in sorted(runs.items(), reverse=True):
        lines.append(f"| {dtype} | {run['engine']} | {OLD_COMMIT[:7]} | {run['ppl']:.10f} | | "
                     f"{run['prune_seconds']:.0f} | {run['eval_seconds']:.0f} |")
        current = [r for r in json.loads((RESULTS / "rounding_noise.json").read_text())["rows"]
                   if _engine(r).startswith("prunelab") and (_engine(r) == FLOAT64) == (dtype == "float64")
                   and r["order"] == "identity" and r.get("cpu") == run.get("cpu") and r["threads"] == run["threads"]]
        for r in current:
            lines.append(f"| {dtype} | current: {_engine(r)} (`rounding_noise.py`) | {r['commit']} | {r['ppl']:.10f} | "
                         f"**{r['ppl'] / run['ppl'] - 1:+.1e}** | {r['prune_seconds']:.0f} | "
                         f"{r.get('eval_seconds', float('nan')):.0f} |")
        if not current:
            notes.append(f"- No {dtype} identity-order row of the current engine on this CPU: run `python "
                         f"benchmarks/rounding_noise.py --dtype {dtype} --orders identity --threads {run['threads']}`.")
    lines += ["", "- float64: the relative difference is to be read against float64's own order-to-order spread "
              "(1.2e-7); float32: against float32's (up to 2.8% over 24 orders), both in `rounding_noise.md`.",
              *notes, "", "Reproduce: `python benchmarks/old_engine/float64_parity.py [--dtype float32]` (a git "
              "worktree of the old commit with float64.patch applied)"]
    write_markdown(RESULTS / "old_engine_float64.md", lines)


if __name__ == "__main__":
    raise SystemExit(main())
