"""Did the engine work of issue 16 change what SparseGPT computes? The engine from before it, run in float64.

In float32 that question has no sharp answer: reordering the same calibration sequences alone moves SparseGPT 50%'s
perplexity by up to 2.8% (benchmarks/results/rounding_noise.md), more than any kernel change. In float64 the
current engine gives 65.2284756 for the same sequences in four orders (the other two within 1.2e-7). This script
checks out the engine from before issue 16 (commit 1ec99dc: one sequence per forward, full XᵀX products, explicit
inverse then Cholesky in the solve, sdpa attention) into a git worktree, applies float64.patch (the few lines that
let that engine keep float64 statistics and solve float64 weights, as the current one does), runs the same
protocol (64 x 512 C4 seed 0, identity order; WikiText-2 test, seqlen 512, first 128 windows) and compares.

    python benchmarks/old_engine/float64_parity.py [--worktree DIR]
Results: benchmarks/results/old_engine_float64.{json,md}
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from measure import cpu_description, git_commit, write_markdown  # noqa: E402


def prune_and_evaluate() -> dict:
    """The protocol on whatever prunelab is importable (the old worktree's, through PYTHONPATH)."""
    import torch

    import prunelab
    from prunelab.algorithms import get_algorithm
    from prunelab.api import calibration_data, evaluate
    from prunelab.config import CalibrationConfig
    from prunelab.engine import prune_model
    from prunelab.models.loading import load_model
    from prunelab.patterns import Pattern

    model, tokenizer, _ = load_model("smollm2-135m", "float64")
    ids, info = calibration_data(tokenizer, CalibrationConfig("c4", "train", 64, 512, 0))
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # inside the old engine's environment: print one JSON line
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(prune_and_evaluate()))
        return 0
    prepare(args.worktree)
    env = dict(os.environ, PYTHONPATH=str(args.worktree / "src"))
    proc = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads)], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    old = json.loads(proc.stdout.strip().splitlines()[-1])
    if not old["module"].startswith(str(args.worktree)):
        raise SystemExit(f"the child imported prunelab from {old['module']}, not from the old worktree")
    old |= {"engine": f"before issue 16 ({OLD_COMMIT[:7]}) + float64.patch", "cpu": cpu_description(),
            "script_commit": git_commit()}
    rows = json.loads((RESULTS / "rounding_noise.json").read_text())["rows"]
    new = [r for r in rows if r.get("dtype") == "float64" and r["order"] == "identity" and r.get("cpu") == old["cpu"]]
    (RESULTS / "old_engine_float64.json").write_text(json.dumps({"old": old, "current": new}, indent=1))
    lines = ["# SparseGPT 50% in float64: the engine from before issue 16 against the current one", "",
             "Same protocol (64 x 512 C4 seed 0, identity order; WikiText-2 test, seqlen 512, first 128 windows), "
             f"{old['threads']} threads, {old['cpu']}.", "",
             "| engine | commit | WikiText-2 ppl | prune s | eval s |", "|---|---|---|---|---|",
             f"| {old['engine']} | {OLD_COMMIT[:7]} | {old['ppl']:.10f} | {old['prune_seconds']:.0f} | "
             f"{old['eval_seconds']:.0f} |"]
    lines += [f"| current (`rounding_noise.py --dtype float64`) | {r['commit']} | {r['ppl']:.10f} | "
              f"{r['prune_seconds']:.0f} | {r.get('eval_seconds', float('nan')):.0f} |" for r in new]
    lines.append("")
    for r in new:
        lines.append(f"- Relative difference, current vs before: **{r['ppl'] / old['ppl'] - 1:.1e}** (float32 runs of "
                     "this protocol differ by up to 2.8% between calibration orders alone, `rounding_noise.md`).")
    if not new:
        lines.append("- No float64 row of the current engine on this CPU yet: run `python benchmarks/rounding_noise.py "
                     "--dtype float64 --orders identity --threads 2` first.")
    lines += ["", "Reproduce: `python benchmarks/old_engine/float64_parity.py` (a git worktree of the old commit with "
              "float64.patch applied; the current engine's row comes from rounding_noise.json)"]
    write_markdown(RESULTS / "old_engine_float64.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
