"""Experiment: DSnoT on Wanda masks, on all layers (our default) or attention layers only (the authors' default,
``--skip_layer mlp``), against plain Wanda. Protocol of the core issue: calibration 64 x 512 from C4, seed 0;
WikiText-2 test, seqlen 512, first 128 windows.

    python benchmarks/experiments/dsnot_variants.py wanda@0.6,dsnot@0.6,dsnot-attn@0.6 out.json [validation]

An optional third argument evaluates on another WikiText-2 split (``validation``: to choose options without
looking at the test split).

Variants: ``wanda@L``; ``dsnot@L`` (Wanda + --refine dsnot); ``dsnot-h@L`` (+ --refine dsnot-h); a ``-attn``
suffix refines attention projections only; a ``-tok`` suffix measures DSnoT's error per token with the variance
over all tokens (prunelab before 2026-11-27) instead of per calibration sequence with the within-sequence
variance (the authors' code); ``~key=value`` after the name passes an option to the refinement
(``dsnot~threshold=0.01@0.6``). The attention-only variant is not a prunelab option; this script wraps the
engine's per-layer solve (to learn the layer's name) and the registered refine step's ``dsnot_refine`` call to skip
layers whose name contains "mlp".
"""
import dataclasses
import json
import sys
import time

import prunelab
from prunelab.algorithms import get_algorithm
from prunelab.api import calibration_data
from prunelab.bench.sweep import _parameter_snapshot, _restore
from prunelab.config import CalibrationConfig
from prunelab.algorithms import dsnot
from prunelab.engine import prune_model
from prunelab.engine import sequential
from prunelab.engine.sequential import PostSteps
from prunelab.models.loading import DEFAULT_MODEL, load_model
from prunelab.patterns import Pattern

variant_settings = {"fragment": None, "layer": "", "options": {}, "token_units": False}
solve, dsnot_refine = sequential.solve, dsnot.dsnot_refine


def solve_named(dense, algorithm, stats, pattern, post, name="?", **kwargs):
    variant_settings["layer"] = name
    return solve(dense, algorithm, stats, pattern, post, name, **kwargs)


def refine_unless_skipped(w_dense, w_pruned, stats, pattern, **options):
    if variant_settings["fragment"] and variant_settings["fragment"] in variant_settings["layer"]:
        return w_pruned
    if variant_settings["token_units"]:  # every token its own "sequence": per-token error, variance over all tokens
        stats = dataclasses.replace(stats, n_samples=stats.n_tokens, seq_sum_sq=stats.mean_sum ** 2 / stats.n_tokens)
    return dsnot_refine(w_dense, w_pruned, stats, pattern, **{**options, **variant_settings["options"]})


def main() -> int:
    variants, out = sys.argv[1].split(","), sys.argv[2]
    split = sys.argv[3] if len(sys.argv) > 3 else "test"
    sequential.solve, dsnot.dsnot_refine = solve_named, refine_unless_skipped
    model, tokenizer, _ = load_model(DEFAULT_MODEL)
    calibration, _ = calibration_data(tokenizer, CalibrationConfig(samples=64, seqlen=512, seed=0))
    snapshot = _parameter_snapshot(model)
    results = {}
    for variant in variants:
        name, level = variant.split("@")
        name, *options = name.split("~")
        variant_settings["options"] = {k: int(v) if k == "max_cycles" else float(v)
                                       for k, v in (o.split("=") for o in options)}
        _restore(model, snapshot)
        variant_settings["fragment"] = "mlp" if "-attn" in name else None
        variant_settings["token_units"] = "-tok" in name
        refine = name.replace("-attn", "").replace("-tok", "") if name.startswith("dsnot") else None
        start = time.perf_counter()
        prune_model(model, get_algorithm("wanda"), Pattern(float(level), scope="row"), calibration, progress=False,
                    post=PostSteps(refine=refine))
        seconds = time.perf_counter() - start
        ppl = prunelab.evaluate(model, tokenizer=tokenizer, data="wikitext2", split=split, seqlen=512, max_windows=128,
                                progress=False)["ppl"]
        results[variant] = {"ppl": ppl, "prune_seconds": seconds, "split": split}
        print(variant, ppl, round(seconds, 1), flush=True)
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
