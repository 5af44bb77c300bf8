"""Layer-by-layer comparison of methods on the same calibration activations (the shape of ALPS's Table 1).

The model is not modified: every method prunes a copy of each dense weight from the statistics of the *dense*
model's activations, so all methods face exactly the same least-squares problem per layer. For each method's
support the optimum (the best weights on that support) is also computed, by PCG run to a tight tolerance
from the best candidate on that support, so one can tell a poor support from poor values on a good support.
PCG is iterative and runs in float32, so its answer can land a hair above a candidate that already was optimal
(ALPS ends with its own refit): the optimum reported is the lower of the two. Errors are evaluated in float64,
so which of two nearly equal weight matrices is better is not decided by float32 rounding.
"""
from __future__ import annotations

import hashlib

import torch
from tqdm.auto import tqdm

from ..algorithms.refit import refit_on_support
from ..engine.sequential import PostSteps, calibrated_blocks, relative_reconstruction_error, solve_weight
from ..models import ModelAdapter


def compare_layers(model, entries: list[tuple[str, object, object, PostSteps]], calibration: torch.Tensor,
                   device="cpu", max_blocks: int | None = None, optimum_iters: int = 200,
                   optimum_tol: float = 1e-6, progress: bool = True, done_blocks: set[int] = frozenset(),
                   on_block=None) -> list[dict]:
    """``entries``: (label, algorithm, pattern, post-steps). Returns one row per (layer, label), in the order
    of ``entries`` within each layer. Blocks in ``done_blocks`` are only run forward (their rows are known);
    ``on_block`` receives each new block's rows as soon as they exist. ``optimum_tol`` is PCG's relative residual (fp32 cannot go much lower)."""
    adapter = ModelAdapter(model)
    needs = frozenset({"hessian"}).union(*(post.needs(alg) for _, alg, _, post in entries))
    blocks = len(adapter.blocks) if max_blocks is None else min(max_blocks, len(adapter.blocks))
    rows = []
    bar = tqdm(total=blocks, desc="compare layers", unit="block", disable=not progress)
    for i, _block, layers, stats in calibrated_blocks(adapter, calibration, needs, torch.device(device)):
        block_rows = []
        for name, layer in layers.items() if i not in done_blocks else ():
            dense = adapter.get_weight(layer).float()
            h = stats[name].hessian
            h64 = h.double()
            results = []
            for label, algorithm, pattern, post in entries:
                pruned, _, seconds = solve_weight(dense, algorithm, stats[name], pattern, post, name)
                results.append((label, pruned, seconds, relative_reconstruction_error(dense, pruned, h64)))
            # One optimum per distinct support (wanda and wanda+refit share one), warm-started from the
            # candidate closest to it, so PCG needs few iterations where a refit already ran.
            optimum = {}
            for label, pruned, seconds, error in sorted(results, key=lambda r: r[3]):
                support = (pruned != 0)
                key = hashlib.sha256(support.cpu().numpy().tobytes()).hexdigest()
                if key not in optimum:  # the first candidate seen on a support is its best (sorted by error)
                    best = refit_on_support(dense, h, support, iters=optimum_iters, tol=optimum_tol, w0=pruned,
                                            dampening=0.0)
                    optimum[key] = min(relative_reconstruction_error(dense, best, h64), error)
                block_rows.append({"block": i, "layer": name, "method": label, "seconds": seconds,
                                   "sparsity": float((pruned == 0).float().mean()), "error": error,
                                   "optimum_error": optimum[key]})
        if block_rows and on_block is not None:
            on_block(block_rows)
        rows += block_rows
        bar.update()
        if i + 1 >= blocks:
            break
    bar.close()
    return rows


def summarize(rows: list[dict]) -> str:
    """Markdown: per method the mean error, mean optimum on its own support, gap, and win rates."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["block"], r["layer"], r["method"]): r for r in rows}
    layers = list(dict.fromkeys((r["block"], r["layer"]) for r in rows))
    lines = ["| method | mean error | mean optimum on its support | mean gap to optimum | max gap | "
             "layers best of all | seconds |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        own = [by[(b, l, m)] for b, l in layers]
        gaps = [(r["error"] - r["optimum_error"]) / r["optimum_error"] if r["optimum_error"] > 0 else 0.0 for r in own]
        best = sum(1 for b, l in layers if min(methods, key=lambda x: by[(b, l, x)]["error"]) == m)
        lines.append(f"| {m} | {sum(r['error'] for r in own) / len(own):.4f} | "
                     f"{sum(r['optimum_error'] for r in own) / len(own):.4f} | {100 * sum(gaps) / len(gaps):.2f}% | "
                     f"{100 * max(gaps):.2f}% | {best}/{len(layers)} | {sum(r['seconds'] for r in own):.1f} |")
    lines += ["", "| block | layer | " + " | ".join(f"{m} (opt)" for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    for b, l in layers:
        cells = [f"{by[(b, l, m)]['error']:.4f} ({by[(b, l, m)]['optimum_error']:.4f})" for m in methods]
        lines.append(f"| {b} | {l} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
