"""Command line: ``prunelab prune`` and ``prunelab eval``. Parsing and printing only; the work is in api.py."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from .models.loading import DEFAULT_MODEL

# Subcommands defined in prunelab/commands/<name>.py (one module each, so adding one touches one line here).
COMMAND_MODULES: tuple[str, ...] = ("data", "finetune", "iterative", "check_algorithm", "speed", "export", "store")


def _method_options(pairs: list[str]) -> dict:
    """``--opt blocksize=64 --opt dampening=0.05`` -> {"blocksize": 64, "dampening": 0.05}."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--opt takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    from .algorithms import available
    from .algorithms.structured import STRUCTURED_METHODS
    from .steps import steps_of

    parser = argparse.ArgumentParser(prog="prunelab", description="Prune and evaluate causal language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and save it as a Hugging Face folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"embedded name, HF folder, hub id or .gguf (default {DEFAULT_MODEL})")
    p.add_argument("--method", required=True, choices=sorted(set(available()) | set(STRUCTURED_METHODS)),
                   help="unstructured: any registered algorithm; with --structure: magnitude, wanda, flap, obs "
                   "(channels/heads) or block-influence (blocks)")
    p.add_argument("--sparsity", type=float, help="fraction of each layer's weights to zero, in [0, 1); with "
                   "--structure: fraction of the decoder blocks' parameters to remove")
    p.add_argument("--structure", choices=["channels", "heads", "channels,heads", "heads,channels", "blocks"],
                   help="structured pruning: physically remove MLP channels, attention heads or whole blocks "
                   "(the saved model is smaller)")
    p.add_argument("--allocation", help="unstructured: per-layer sparsity uniform (default), owl (outlier-weighted) "
                   "or search (evolutionary, reward = calibration loss), the global sparsity exact; structured: "
                   "widths uniform (default, same in every block) or adaptive (FLAP's per-block widths, saved "
                   "zero-padded to the widest block)")
    p.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M (N zeroed of every M, e.g. 2:4)")
    p.add_argument("--scope", choices=["layer", "row", "global"], help="where unstructured sparsity is counted "
                   "(default: the method's; wanda=row, others=layer; global = one threshold over all layers)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option, e.g. --opt dampening=0.01")
    p.add_argument("--refine", choices=steps_of("refine"), help="revise the method's mask with DSnoT (no weight "
                   "updates); dsnot-h keeps only moves that lower the true reconstruction error (XᵀX)")
    p.add_argument("--refit", action="store_true", help="least-squares weights on the final support (PCG)")
    p.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=None,
                   help="record per-layer reconstruction error (default: whenever calibration runs anyway)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="add (W_dense - W)·E[x] to layer biases (default: the method's; MAMA: on)")
    p.add_argument("--owl-m", type=float, help="OWL outlier threshold M (default 5; also --opt owl_m=...)")
    p.add_argument("--owl-lambda", type=float, help="OWL spread λ around the target (default 0.08; also --opt owl_lambda=...)")
    p.add_argument("--search-budget", type=int, help="allocation search budget in calibration forward passes "
                   "(default 400; also --opt search_budget=..., search_samples, search_seed, search_max_shift)")
    p.add_argument("--calib", default="c4", help="calibration corpus (c4, wikitext2, ptb, a .txt/.jsonl file or "
                   "hf:DATASET[:CONFIG][?data_files=...&revision=...]); read locally if present, else from the Hub")
    p.add_argument("--calib-split", default=None, help="default: train for c4, validation otherwise")
    p.add_argument("--calib-samples", type=int, help="segments (default 64 for the embedded model, else 128)")
    p.add_argument("--calib-seqlen", type=int, help="tokens per segment (default 512 for the embedded model, else 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="compute device for one block at a time (default: cuda if available)")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 | float64 (layer math is fp32, "
                   "fp64 for float64: a reference mode with ~1e9 times less rounding; on a 2-core Zen 5 pruning took "
                   "~3x and evaluation ~2x float32's time)")
    p.add_argument("--compute-dtype", help="dtype of the block forwards and activations, e.g. bfloat16 (default: "
                   "--dtype); weights keep --dtype, statistics are accumulated in fp32 (fp64 for float64 forwards)")
    p.add_argument("--cpu-linear", choices=["auto", "onednn", "aten"], default="auto", help="CPU kernel of the "
                   "engine's products: the float32 Linear layers and the causal attention of the block forwards and "
                   "the XᵀX statistics. onednn (auto, where torch has it; faster than aten's MKL sgemm and sdpa's "
                   "flash kernel on the hosts measured) or aten (torch's default matmul and sdpa); results differ by "
                   "float rounding only")
    p.add_argument("--calib-batch-size", type=int, help="calibration sequences per block forward (default: about "
                   "512 tokens on CPU, 16384 on CUDA)")
    p.add_argument("--offload", choices=["auto", "disk", "none"], default="auto", help="disk: stream the model one "
                   "block at a time from its files and write pruned blocks to --out as they are done (for models "
                   "larger than memory); auto (default): disk when the weights exceed --offload-share of the "
                   "available memory")
    p.add_argument("--offload-share", type=float, default=0.5, help="share of available memory above which "
                   "--offload auto streams (default 0.5)")
    p.add_argument("--max-activation-memory", help="host memory for the calibration activations (e.g. 2GB); above "
                   "it they go to a file on disk (default: half the available memory)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--eval", dest="eval_data", help="also report perplexity on this corpus (wikitext2, ptb, c4, a file "
                   "or hf:...); the model is saved before it is evaluated")
    p.add_argument("--eval-seqlen", type=int)
    p.add_argument("--eval-windows", type=int, help="evaluate only the first K windows")
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    p.add_argument("--save-format", default="dense", choices=["dense", "bitmask", "nm"],
                   help="dense: plain HF folder (zeros stored); bitmask: kept values + 1 bit per weight; "
                        "nm: N:M packed (needs --pattern N:M). Compressed folders load with prunelab.load")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_prune)

    c = sub.add_parser("compare-layers", help="reconstruction error of several methods per layer, same activations")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--methods", required=True,
                   help="comma list; a method may carry steps: wanda+dsnot, magnitude+refit (e.g. magnitude,wanda,sparsegpt,alps)")
    c.add_argument("--sparsity", type=float)
    c.add_argument("--pattern", default="unstructured")
    c.add_argument("--calib", default="c4")
    c.add_argument("--calib-split", default=None)
    c.add_argument("--calib-samples", type=int)
    c.add_argument("--calib-seqlen", type=int)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    c.add_argument("--max-blocks", type=int, help="only the first K blocks (quick look)")
    c.add_argument("--out", required=True, help="folder for layers.json and layers.md (rerun the same command "
                   "to resume an interrupted comparison: finished blocks are kept in layers.partial.jsonl)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(handler=_compare)

    w = sub.add_parser("sweep", help="run methods x levels x patterns into a results store (resumable)")
    w.add_argument("--config", help="sweep file (.yaml/.toml) with the same settings; flags given override it")
    w.add_argument("--store", help="SQLite results store (created if missing); rerunning continues it")
    w.add_argument("--models", help=f"comma list (default {DEFAULT_MODEL})")
    w.add_argument("--methods", help="comma list; a method may carry steps: wanda+dsnot, magnitude+refit, "
                   "and an allocation: wanda+owl, sparsegpt+search")
    w.add_argument("--plugin", action="append", metavar="PATH", help="load a PruningAlgorithm plug-in (.py file, "
                   "FILE.py:Class or module:Class) so --methods can name it; repeatable")
    w.add_argument("--levels", help="comma list of unstructured sparsities (default 0.01,0.05,0.1,0.2,...,0.9,0.95,0.99)")
    w.add_argument("--patterns", help="comma list of 'unstructured' and N:M (default unstructured)")
    w.add_argument("--opt", action="append", metavar="METHOD.KEY=VALUE", help="method option, e.g. sparsegpt.blocksize=64")
    w.add_argument("--calib", help="calibration corpus (default c4)")
    w.add_argument("--calib-samples", type=int)
    w.add_argument("--calib-seqlen", type=int)
    w.add_argument("--seeds", help="comma list of calibration seeds (default 0)")
    w.add_argument("--eval", dest="eval_data", help="comma list of perplexity corpora (default wikitext2; 'none' for none)")
    w.add_argument("--eval-seqlen", type=int)
    w.add_argument("--eval-windows", type=int, help="only the first K windows")
    w.add_argument("--eval-batch-size", type=int, help="perplexity windows per forward (default 1; 8 at seqlen 512 "
                   "is 2-3x faster on busy CPUs, as fast on idle ones, equal to ~1e-6; part of each run's identity)")
    w.add_argument("--tasks", help="zero-shot tasks, comma list or 'all'")
    w.add_argument("--limit", type=int, help="first N items of each task")
    w.add_argument("--generate", action="store_true", default=None, help="record greedy samples of every model")
    w.add_argument("--save-dir", help="also save every pruned model under this folder")
    w.add_argument("--finetune", action="append", metavar="KEY=VALUE", help="fine-tuning setting for methods with "
                   "+ft, +lora or +iter[-SCHEDULE] (e.g. tokens=40000, lr=1e-4, lora=16, iter_steps=5)")
    w.add_argument("--speed", action="store_true", default=None,
                   help="also measure every model with prunelab speed (defaults, or the sweep file's speed: settings)")
    w.add_argument("--retry-failed", action="store_true", help="redo runs recorded as failed")
    w.add_argument("--device")
    w.add_argument("--executor", choices=["local", "ray"], default="local", help="local: runs one after the other "
                   "in this process; ray: each run a Ray task (pip install \"prunelab[ray]\"); this process alone "
                   "writes the store either way")
    w.add_argument("--ray-address", help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: start "
                   "a local one")
    w.add_argument("--cpus-per-run", type=int, default=1, help="CPUs (= torch threads) each Ray task asks for")
    w.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each Ray task asks for (then --device "
                   "defaults to cuda)")
    w.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    w.add_argument("--quiet", action="store_true", help="no per-block progress bars (the per-run lines stay)")
    w.set_defaults(handler=_sweep)

    r = sub.add_parser("report", help="render a results store as report.md and a self-contained report.html")
    r.add_argument("--store", required=True)
    r.add_argument("--out", required=True, help="folder for report.md, report.html and the plots")
    r.add_argument("--methods", help="only these methods (comma list)")
    r.add_argument("--models", help="only these models (comma list)")
    r.add_argument("--title")
    r.set_defaults(handler=_report)

    e = sub.add_parser("eval", help="perplexity, zero-shot tasks (lm-evaluation-harness conventions) and samples")
    e.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    e.add_argument("--data", help="perplexity corpus: wikitext2, ptb, c4 (validation, SparseGPT's rule), a .txt/.jsonl "
                   "file or hf:DATASET (default wikitext2, or none when --tasks/--generate are given)")
    e.add_argument("--split", default="test", help="default test (for c4: validation, which has no test split)")
    e.add_argument("--seqlen", type=int, help="window length (default 2048; 512 for the embedded model)")
    e.add_argument("--max-windows", type=int)
    e.add_argument("--batch-size", type=int, help="perplexity windows per forward pass (default: about 4096 tokens, "
                   "at most 1 GiB of logits; changes the result only by float rounding)")
    e.add_argument("--tasks", help="comma list of zero-shot tasks, or 'all': lambada, piqa, arc_easy, arc_challenge, "
                   "hellaswag, boolq, winogrande, openbookqa, siqa")
    e.add_argument("--limit", type=int, help="score only the first N items of each task (file order, like the harness)")
    e.add_argument("--task-batch-size", type=int, default=32, help="task sequences per forward pass (default 32)")
    e.add_argument("--details", action="store_true", help="keep per-item log-likelihoods in the JSON")
    e.add_argument("--task-source", choices=["auto", "local", "hf"], default="auto",
                   help="task data: the local copies where present, else the Hugging Face datasets the harness "
                   "reads (auto, default); or force one")
    e.add_argument("--no-context-sharing", action="store_true",
                   help="score every choice as its own sequence (default: run a shared context once per item)")
    e.add_argument("--generate", action="store_true", help="add greedy continuations of the fixed prompt set")
    e.add_argument("--max-new-tokens", type=int, help="tokens per generated sample (default 48)")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--device")
    e.add_argument("--offload", choices=["none", "disk"], default="none",
                   help="disk: stream the model block by block from its files (perplexity only; models larger than memory)")
    e.add_argument("--json", help="write the result to this JSON file")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(handler=_eval)

    g = sub.add_parser("generate", help="greedy, deterministic continuations of a fixed prompt set")
    g.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    g.add_argument("--prompt", action="append", help="a prompt (repeatable); default: the fixed prompt set")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--dtype", default="float32")
    g.add_argument("--device")
    g.add_argument("--json", help="write the samples to this JSON file")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(handler=_generate)

    # Further commands live in their own modules: each has add_parser(sub) that sets its handler.
    for module in COMMAND_MODULES:
        importlib.import_module(f"prunelab.commands.{module}").add_parser(sub)
    return parser


def _calibration(args):
    from .config import EMBEDDED_CALIBRATION, PAPER_CALIBRATION, CalibrationConfig

    n_default, len_default = EMBEDDED_CALIBRATION if args.model == DEFAULT_MODEL else PAPER_CALIBRATION
    split = args.calib_split or ("train" if args.calib == "c4" else "validation")
    return CalibrationConfig(args.calib, split, args.calib_samples or n_default, args.calib_seqlen or len_default,
                             args.seed)


def _compare(args) -> int:
    from pathlib import Path

    from .api import compare_layers
    from .eval.reconstruction import summarize
    from .export import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = compare_layers(args.methods.split(","), model=args.model, sparsity=args.sparsity, pattern=args.pattern,
                            calibration=_calibration(args), device=args.device, max_blocks=args.max_blocks,
                            progress=not args.quiet, checkpoint=out / "layers.partial.jsonl")
    write_json(out / "layers.json", result)
    pattern = result["pattern"]
    header = (f"# Layer reconstruction error: {args.model}, "
              f"{'%d:%d' % (pattern['n'], pattern['m']) if pattern['m'] else 'unstructured %g' % pattern['sparsity']}\n\n"
              f"Relative error ‖XŴ − XW‖_F / ‖XŴ‖_F on the dense model's calibration activations "
              f"({result['calibration']['samples']} x {result['calibration']['seqlen']} tokens of "
              f"{result['calibration']['corpus']}); in brackets the optimum for the same support.\n\n")
    table = summarize(result["rows"])
    (out / "layers.md").write_text(header + table)
    print(header + table.split("\n\n")[0])
    return 0


def _prune(args) -> int:
    from .api import prune
    from .config import PruneConfig

    calibration = _calibration(args)
    sparsity = args.sparsity
    if sparsity is None and args.pattern == "unstructured" and not args.structure:
        raise ValueError("--sparsity is required for unstructured pruning (or give --pattern N:M)")
    config = PruneConfig(method=args.method, model=args.model, sparsity=sparsity, pattern=args.pattern,
                         scope=args.scope, method_options=_method_options(args.opt), calibration=calibration,
                         device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                         refine=args.refine, refit=args.refit, diagnostics=args.diagnostics,
                         bias_correction=args.bias_correction, structure=args.structure,
                         allocation=args.allocation, calib_batch_size=args.calib_batch_size,
                         compute_dtype=args.compute_dtype, cpu_linear=args.cpu_linear, offload=args.offload,
                         offload_share=args.offload_share,
                         max_activation_memory=args.max_activation_memory,
                         allocation_options={k: v for k, v in (("owl_m", args.owl_m), ("owl_lambda", args.owl_lambda),
                                                               ("search_budget", args.search_budget)) if v is not None})
    result = prune(config, out=args.out, force=args.force, eval_data=args.eval_data, eval_seqlen=args.eval_seqlen,
                   eval_windows=args.eval_windows, progress=not args.quiet, save_format=args.save_format)
    rec = result.record
    summary = {"out": str(result.out), "sparsity": rec["summary"]["sparsity"], "prune_seconds": rec["prune_seconds"],
               "peak_rss_mb": rec["peak_rss_bytes"] / 2**20}
    if "achieved_sparsity" in rec["summary"]:  # structured: the fraction of block parameters actually removed
        summary["achieved_sparsity"] = rec["summary"]["achieved_sparsity"]
        summary["params"] = rec["summary"]["total_params_after"]
    for name, ev in rec.get("eval", {}).items():
        summary[f"{name}_ppl"] = ev["ppl"]
    print(json.dumps(summary, indent=2))
    return 0


def _eval(args) -> int:
    from .api import evaluate
    from .export import write_json

    data = args.data
    if data is None and not (args.tasks or args.generate):
        data = "wikitext2"
    if data is not None and data.lower() == "none":
        data = None
    result = evaluate(args.model, data=data, split=args.split, seqlen=args.seqlen, max_windows=args.max_windows,
                      batch_size=args.batch_size, dtype=args.dtype, device=args.device, progress=not args.quiet,
                      tasks=args.tasks, limit=args.limit, generate=args.generate, max_new_tokens=args.max_new_tokens,
                      task_batch_size=args.task_batch_size, details=args.details,
                      share_context=False if args.no_context_sharing else None, task_source=args.task_source,
                      offload=args.offload)
    if args.json:
        from pathlib import Path
        write_json(Path(args.json), result)
    summary = {k: result[k] for k in ("ppl", "seqlen", "windows", "tokens", "seconds") if k in result}
    for name, task in (result.get("tasks") or {}).items():
        summary[name] = {k: task[k] for k in ("acc", "acc_norm", "perplexity", "items", "seconds") if k in task}
    for sample in result.get("samples") or []:
        summary.setdefault("samples", []).append(sample["prompt"] + sample["continuation"])
    print(json.dumps(summary, indent=2))
    return 0 if result.get("finite", True) else 3


def _generate(args) -> int:
    from .api import evaluate
    from .export import write_json

    result = evaluate(args.model, data=None, generate=True, prompts=args.prompt, max_new_tokens=args.max_new_tokens,
                      dtype=args.dtype, device=args.device, progress=not args.quiet)
    if args.json:
        from pathlib import Path
        write_json(Path(args.json), result)
    for sample in result["samples"]:
        print(f"--- {sample['prompt']!r}\n{sample['prompt']}{sample['continuation']}")
    return 0


def _sweep_settings(args) -> dict:
    """The sweep file's settings with the flags given on top."""
    from .bench.sweep import load_sweep_file

    data = load_sweep_file(args.config) if args.config else {}
    for flag, key in (("models", "models"), ("methods", "methods"), ("levels", "levels"), ("patterns", "patterns"),
                      ("device", "device"), ("save_dir", "save_dir"), ("store", "store")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    calib = dict(data.get("calibration") or {})
    for flag, key in (("calib", "corpus"), ("calib_samples", "samples"), ("calib_seqlen", "seqlen"), ("seeds", "seeds")):
        if getattr(args, flag) is not None:
            calib[key] = getattr(args, flag)
    if calib:
        data["calibration"] = calib
    ev = dict(data.get("eval") or {})
    if args.eval_data is not None:
        ev["perplexity"] = [] if args.eval_data == "none" else args.eval_data
    for flag, key in (("eval_seqlen", "seqlen"), ("eval_windows", "windows"), ("eval_batch_size", "batch_size"),
                      ("tasks", "tasks"), ("limit", "limit"), ("generate", "generate")):
        if getattr(args, flag) is not None:
            ev[key] = getattr(args, flag)
    if ev:
        data["eval"] = ev
    if args.finetune:
        data["finetune"] = {**(data.get("finetune") or {}), **_method_options(args.finetune)}
    if args.speed:
        data["speed"] = data.get("speed") or True
    for pair in args.opt or []:
        key, sep, value = pair.partition("=")
        method, dot, option = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--opt takes METHOD.KEY=VALUE, got {pair!r}")
        data.setdefault("options", {}).setdefault(method, {}).update(_method_options([f"{option}={value}"]))
    return data


def _load_plugins(paths) -> None:
    """Register each plug-in (.py file, FILE.py:Class or module:Class) under its ``name``."""
    from .algorithms import available, register
    from .algorithms.base import _REGISTRY

    available()  # built-ins and entry points first
    if not paths:
        return
    from .gate.worker import load_plugin  # imports every family's model class: only when there are plug-ins

    for path in paths:
        before = dict(_REGISTRY)
        cls = load_plugin(path)  # a plug-in may @register itself while loading
        name = getattr(cls, "name", None)
        if not name:
            raise ValueError(f"plug-in {path}: its class needs a `name` to be used by name")
        if name in before and before[name] is not cls:
            _REGISTRY[name] = before[name]
            raise ValueError(f"plug-in {path} is named {name!r}, like an algorithm already registered; rename it")
        register(cls)


def _sweep(args) -> int:
    import contextlib

    from .bench import ResultsStore, run_sweep
    from .bench.executors import make_executor
    from .bench.sweep import sweep_config_from_dict
    from .config import devices_checked_where_runs_execute

    _load_plugins(args.plugin)
    data = _sweep_settings(args)
    store_path = data.pop("store", None)
    if not store_path:
        raise ValueError("give --store FILE.db (or 'store:' in the sweep file)")
    if not data.get("methods"):
        raise ValueError("give --methods (or 'methods:' in the sweep file)")
    remote = args.executor != "local"
    if remote and args.gpus_per_run and not data.get("device"):
        data["device"] = "cuda"
    with devices_checked_where_runs_execute() if remote else contextlib.nullcontext():
        config = sweep_config_from_dict(data)
        runs = config.runs()
    store = ResultsStore(store_path)
    try:
        if args.dry_run:
            states = {}
            for row in store.rows():
                states[(row["model"], row["method"], row["pattern"], row["level"])] = row["status"]
            for spec in runs:
                state = states.get((spec.config.model, spec.method, spec.pattern_label, spec.level), "to do")
                print(f"{spec.config.model}  {spec.describe():<28} {state}")
            print(f"{len(runs)} runs (+1 dense evaluation per model); nothing was run (--dry-run)")
            return 0
        executor = make_executor(args.executor, args.ray_address, args.cpus_per_run, args.gpus_per_run)
        store.note_sweep(data, ["prunelab", *args.argv])
        print(f"[prunelab] sweep: {len(runs)} runs + dense, store {store_path}, executor {args.executor}", flush=True)
        counts = run_sweep(config, store, retry_failed=args.retry_failed, progress=not args.quiet, executor=executor)
    finally:
        store.close()
    print(json.dumps(counts, indent=2))
    return 0


def _report(args) -> int:
    from .bench.report import write_report

    files = write_report(args.store, args.out, methods=args.methods.split(",") if args.methods else None,
                         models=args.models.split(",") if args.models else None, title=args.title)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ImportError) as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunelab: interrupted; " + ("finished runs are kept in the store: rerun the same command to continue"
                                           if args.command == "sweep" else
                                           "the last checkpoint is kept: rerun the same command to resume"
                                           if args.command in ("finetune", "iterative") else
                                           "nothing was written to the output folder"),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
