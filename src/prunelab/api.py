"""The Python API: ``prunelab.prune`` and ``prunelab.evaluate``. The CLI only wraps these."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEFAULT_EVAL_SEQLEN, CalibrationConfig, PruneConfig
from .data import Corpus, calibration_segments, corpus_windows, load_corpus, tensor_sha256
from .engine import prune_model
from .eval import perplexity
from .eval.perplexity import blockwise_perplexity, model_device
from .export import RECORD_NAME, check_output_dir, read_record, save_pruned, write_json
from .models import DEFAULT_MODEL, ModelAdapter, load_model, resolve_source
from .models.streaming import open_streaming
from .record import host_description, package_versions, peak_rss_bytes, timestamp


@dataclass
class PruneResult:
    model: object
    tokenizer: object
    record: dict
    out: Path | None = None


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[prunelab] {message}", flush=True)


def sparsity_summary(model) -> dict:
    """Zeros among the prunable (decoder-block Linear) weights, and non-zero parameters of the whole model."""
    adapter = ModelAdapter(model)
    zeros = total = 0
    for _, layer in adapter.named_prunable_layers():
        w = adapter.get_weight(layer)
        zeros += w.numel() - int(torch.count_nonzero(w))
        total += w.numel()
    seen, nonzero, params = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))  # (p != 0).sum() would widen to int64: 8 bytes a weight
    return {"prunable_params": total, "prunable_zeros": zeros, "sparsity": zeros / total if total else 0.0,
            "total_params": params, "nonzero_params": nonzero}


def _check_save_format(save_format: str, pattern) -> tuple[int, int] | None:
    """(N, M) for the nm format; raises before any work when the format cannot hold the pattern."""
    from .formats import SAVE_FORMATS

    if save_format not in SAVE_FORMATS:
        raise ValueError(f"save format {save_format!r} is not one of {SAVE_FORMATS}")
    if save_format != "nm":
        return None
    if pattern is None:
        raise ValueError("--save-format nm stores N:M sparsity; a structured model is smaller and dense: save it "
                         "as dense (the default)")
    if not pattern.is_nm:
        raise ValueError("--save-format nm stores N:M sparsity; prune with --pattern N:M (e.g. 2:4), "
                         "or use --save-format bitmask for unstructured sparsity")
    return pattern.n, pattern.m


def load(source: str | Path, dtype: str = "float32", device: str | None = None, trust_remote_code: bool = False):
    """Load any model prunelab reads (embedded name, .gguf, HF or prunelab folder in any --save-format, hub
    id) for inference; returns (model, tokenizer). The one loader for folders prunelab wrote."""
    model, tokenizer, _ = load_model(str(source), dtype, trust_remote_code)
    if device:
        model.to(device)
    return model, tokenizer


def export_model(source: str | Path, out: str | Path, save_format: str = "dense", pattern: str | None = None,
                 force: bool = False, dtype: str = "float32", progress: bool = True) -> Path:
    """Rewrite a model (any source ``load`` reads) in ``save_format``; "dense" gives a plain HF folder.

    ``pattern`` ("N:M") is needed for nm unless the source's prunelab.json recorded an N:M pattern. The
    source's record is carried over with an "export" entry; a source without one gets a minimal record."""
    from .formats import SAVE_FORMATS
    from .patterns import Pattern

    if save_format not in SAVE_FORMATS:
        raise ValueError(f"format {save_format!r} is not one of {SAVE_FORMATS}")
    check_output_dir(out, force)
    prior = read_record(source) if Path(source).is_dir() else None
    nm = None
    if save_format == "nm":
        if pattern:
            parsed = Pattern.parse(None, pattern)
        else:
            recorded = ((prior or {}).get("config") or {}).get("pattern_resolved") or {}
            if not recorded.get("m"):
                raise ValueError(f"{source} records no N:M pattern; give --pattern N:M for --format nm")
            parsed = Pattern(n=recorded["n"], m=recorded["m"], scope="row")
        nm = (parsed.n, parsed.m)
    started = time.perf_counter()
    model, tokenizer, resolved = load_model(str(source), dtype)
    record = dict(prior) if prior else {"prunelab_record": 1, "created": timestamp(),
                                        "model_source": {"kind": resolved.kind, "location": resolved.location,
                                                         **resolved.identity},
                                        "summary": sparsity_summary(model)}
    record["save_format"] = save_format
    record["export"] = {"from": str(source), "format": save_format, "nm": list(nm) if nm else None,
                        "dtype": dtype, "created": timestamp(), "versions": package_versions()}
    path = save_pruned(model, tokenizer, out, record, force=force, save_format=save_format, nm=nm)
    _log(progress, f"exported {source} as {save_format} to {path} in {time.perf_counter() - started:.1f}s")
    return path


def calibration_data(tokenizer, calib: CalibrationConfig, corpus: Corpus | None = None) -> tuple[torch.Tensor, dict]:
    """The calibration token ids and what the record says of them; ``corpus`` if already loaded."""
    corpus = corpus or load_corpus(calib.corpus, calib.split)
    segments = calibration_segments(tokenizer, corpus, calib.samples, calib.seqlen, calib.seed)
    info = {"corpus": calib.corpus, "split": calib.split, "source": corpus.source, "data_sha256": corpus.sha256,
            "samples": calib.samples, "seqlen": calib.seqlen, "seed": calib.seed,
            "tokens_sha256": tensor_sha256(segments), "provenance": corpus.provenance}
    return segments, info


def prune(config: PruneConfig | None = None, *, out: str | Path | None = None, force: bool = False,
          eval_data: str | None = None, eval_seqlen: int | None = None, eval_windows: int | None = None,
          progress: bool = True, save_format: str = "dense", **config_fields) -> PruneResult:
    """Load, calibrate, prune and (with ``out``) save a model; optionally evaluate its perplexity.

    ``prune(method="wanda", sparsity=0.5)`` builds the PruneConfig from keyword arguments. Every input (output
    folder, calibration and evaluation corpora) is checked, and downloaded if needed, before the model is loaded;
    the pruned model is saved before it is evaluated, so an evaluation failure never loses a finished prune.
    ``save_format``: "dense" (an ordinary HF folder), "bitmask" or "nm" (needs an N:M pattern); see
    prunelab/formats.py.
    """
    config = config or PruneConfig(**config_fields)
    nm = _check_save_format(save_format, None if config.structure is not None else config.pattern_obj())
    if out is not None:
        check_output_dir(out, force)
    structured = config.structure is not None
    pattern = None if structured else config.pattern_obj()
    algorithm = None if structured else config.algorithm()
    log = lambda message: _log(progress, message)  # noqa: E731
    calib_corpus = (load_corpus(config.calibration.corpus, config.calibration.split, log=log)
                    if config.needs_calibration else None)
    eval_corpus = load_corpus(eval_data, log=log) if eval_data else None
    started = time.perf_counter()
    resolved = resolve_source(config.model)
    blocks = None
    if _streams(config, resolved, progress):
        if structured:
            raise ValueError("structured pruning changes shapes and needs the model in memory; run it without "
                             "--offload disk (with --offload none if the automatic choice streamed)")
        if out is None:
            raise ValueError("a streamed run (offload disk) writes each pruned block to the output as it goes; "
                             "give --out (out=...)")
        if save_format != "dense":
            raise ValueError(f"a streamed run (offload disk) writes dense shards; save it dense, then "
                             f"prunelab export OUT --format {save_format} --out OUT2")
        model, tokenizer, source, blocks = open_streaming(config.model, config.dtype, config.trust_remote_code,
                                                          out=out, force=force, resolved=resolved)
    else:
        model, tokenizer, source = load_model(config.model, config.dtype, config.trust_remote_code, resolved=resolved)
    load_seconds = time.perf_counter() - started
    _log(progress, f"loaded {config.model} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
                   f"params, {config.dtype}{', streamed block by block' if blocks else ''}) in {load_seconds:.1f}s")

    calibration, calib_info = None, None
    if config.needs_calibration:
        calib = config.calibration
        _log(progress, f"calibration: {calib.samples} x {calib.seqlen} tokens from {calib.corpus}/{calib.split} "
                       f"({calib_corpus.source}), seed {calib.seed}")
        calibration, calib_info = calibration_data(tokenizer, calib, calib_corpus)
    start = time.perf_counter()
    structure_record = allocation = None
    engine: dict = {"offload": "disk" if blocks else "none"}
    if structured:
        from .engine.structured import prune_structured

        _log(progress, f"structured pruning with {config.method}: remove {config.sparsity:g} of the decoder blocks' "
                       f"parameters as {config.structure}, on {config.device}")
        structure_record = prune_structured(model, config.structured_spec(), calibration, device=config.device,
                                            progress=progress)
        layer_dicts = structure_record.pop("layers")
        errors = [r["reconstruction_error"] for r in layer_dicts if r.get("reconstruction_error") is not None]
    else:
        _log(progress, f"pruning with {config.method}, {pattern.describe()}, on {config.device}")
        allocation = config.allocation_obj() if config.allocation is not None else None
        try:
            layers = prune_model(model, algorithm, pattern, calibration, device=config.device, progress=progress,
                                 post=config.post_steps(), source=blocks, options=config.engine_options(),
                                 info=engine, allocation=allocation)
        except BaseException:
            if blocks is not None:
                blocks.close()  # drop the staging folder: no half-written output
            raise
        layer_dicts = [r.to_dict() for r in layers]
        errors = [r.reconstruction_error for r in layers if r.reconstruction_error is not None]
    prune_seconds = time.perf_counter() - start
    if allocation is not None and allocation.info.get("block_sparsity"):
        spread = allocation.info["block_sparsity"]
        _log(progress, f"allocation {allocation.kind}: block sparsities {min(spread):.4f} .. {max(spread):.4f}")
    summary = streamed_summary(blocks, layers) if blocks else sparsity_summary(model)
    if errors:
        summary["mean_reconstruction_error"] = sum(errors) / len(errors)
    if structured:
        summary.update({k: structure_record[k] for k in ("achieved_sparsity", "block_params_before",
                                                          "block_params_after", "total_params_before",
                                                          "total_params_after")})
        _log(progress, f"pruned in {prune_seconds:.1f}s: removed {summary['achieved_sparsity']:.4f} of the decoder "
                       f"blocks' parameters ({summary['block_params_before'] / 1e6:.2f}M -> "
                       f"{summary['block_params_after'] / 1e6:.2f}M; model {summary['total_params_after'] / 1e6:.1f}M)"
                       + (f", mean reconstruction error {summary['mean_reconstruction_error']:.4f}" if errors else ""))
        for note in structure_record["notes"]:
            _log(progress, f"note: {note}")
    else:
        _log(progress, f"pruned in {prune_seconds:.1f}s: sparsity {summary['sparsity']:.4f} of "
                       f"{summary['prunable_params'] / 1e6:.1f}M prunable weights"
                       + (f", mean layer reconstruction error {summary['mean_reconstruction_error']:.4f}" if errors else ""))

    record = {
        "prunelab_record": 1,
        "created": timestamp(),
        "config": config.to_dict(),
        "algorithm_options": algorithm.options() if algorithm else config.structured_spec().to_dict(),
        "model_source": {"kind": source.kind, "location": source.location, **source.identity},
        "calibration": calib_info,
        "summary": summary,
        "prune_seconds": prune_seconds,
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "engine": engine,
        "layers": layer_dicts,
        **({"allocation": allocation.info} if allocation else {}),
        "versions": package_versions(),
        "host": host_description(),
    }
    if structure_record is not None:
        record["structured"] = structure_record
    result = PruneResult(model, tokenizer, record)
    if blocks is not None:  # the pruned model exists only in the output folder: save, then evaluate from it
        result.out = blocks.finish(tokenizer, record)
        _log(progress, f"saved to {result.out}")
    elif out is not None:
        record["save_format"] = save_format
        result.out = save_pruned(model, tokenizer, out, record, force=force, save_format=save_format, nm=nm)
        _log(progress, f"saved to {result.out}")
    if eval_corpus is not None:
        try:
            if blocks is not None:
                evaluated = evaluate(result.out, data=eval_corpus, seqlen=eval_seqlen, max_windows=eval_windows,
                                     device=config.device, dtype=config.dtype, progress=progress, offload="disk")
            else:
                evaluated = evaluate(model, tokenizer=tokenizer, data=eval_corpus, seqlen=eval_seqlen,
                                     max_windows=eval_windows, device=config.device, progress=progress)
            record["eval"] = {eval_data: evaluated}
        except BaseException:
            if result.out is not None:
                _log(True, f"evaluation failed; the pruned model is saved in {result.out} "
                           f"(evaluate it again with: prunelab eval {result.out} --data {eval_data})")
            raise
        if result.out is not None:
            write_json(result.out / RECORD_NAME, record)
    return result


def _streams(config: PruneConfig, resolved, progress: bool) -> bool:
    """Whether to stream the model block by block: asked for (offload disk), or "auto" and its weights exceed
    ``offload_share`` of the memory available now (said in one log line)."""
    from .formats import is_compressed_folder

    if resolved.kind == "folder" and is_compressed_folder(resolved.location):  # expanded in memory, not streamable
        if config.offload == "disk":
            raise ValueError(f"{resolved.location} is a compressed checkpoint (bitmask/nm), expanded in memory; "
                             "to stream it, write it dense first: prunelab export DIR --format dense --out DIR2")
        return False
    if config.offload != "auto":
        return config.offload == "disk"
    from .engine.activations import available_memory_bytes
    from .models.streaming import weights_bytes

    size = weights_bytes(resolved, config.dtype)
    available = available_memory_bytes()
    if size is not None and size > config.offload_share * available:
        _log(True, f"the model's weights ({size / 2**30:.1f} GiB in {config.dtype}) exceed {config.offload_share:.0%} "
                   f"of the available memory ({available / 2**30:.1f} GiB): streaming it block by block from disk "
                   "(--offload disk; --offload none to load it whole)")
        return True
    return False


def streamed_summary(blocks, layers) -> dict:
    """sparsity_summary's numbers for a streamed run, from the layer reports and the counts the source kept."""
    zeros = sum(r.zeros for r in layers)
    total = sum(r.shape[0] * r.shape[1] for r in layers)
    return {"prunable_params": total, "prunable_zeros": zeros, "sparsity": zeros / total if total else 0.0,
            "total_params": blocks.params, "nonzero_params": blocks.nonzero}


def evaluate(model, *, tokenizer=None, data: str | Corpus | None = "wikitext2", split: str = "test",
             seqlen: int | None = None,
             max_windows: int | None = None, batch_size: int | None = None, dtype: str = "float32",
             device: str | None = None, progress: bool = True, tasks: list[str] | str | None = None,
             limit: int | None = None, generate: bool = False, max_new_tokens: int | None = None,
             prompts: list[str] | None = None, task_batch_size: int = 32, data_dir: str | Path | None = None,
             details: bool = False, share_context: bool | None = None, task_source: str = "auto",
             offload: str = "none") -> dict:
    """Evaluate ``model`` (a loaded model with ``tokenizer``, or anything ``load_model`` accepts); one dict back.

    Perplexity of a model loaded on the CPU with ``device="cuda"`` is computed one block at a time on the GPU;
    ``offload="disk"`` (a model named by path or id) streams it block by block from disk (perplexity only).

    - ``data`` (default wikitext2; a Corpus already loaded; None skips it): perplexity, its keys at the top level
      ("ppl", "seqlen", ...). For c4 the split "test" means validation (C4 has no test split).
    - ``tasks`` ("all", "piqa,arc_easy" or a list): zero-shot tasks scored as lm-evaluation-harness does, under
      "tasks": {name: {...}}; ``limit`` keeps the first N items of each task; ``task_batch_size`` sequences per
      forward pass; ``details`` adds per-item log-likelihoods; ``share_context`` (default: where the model family
      allows) runs each context once for all its choices (same numbers up to float rounding); ``task_source``:
      "auto" reads the local copies where present, else the Hugging Face datasets the harness uses; "local" or
      "hf" force one.
    Every input is found (or downloaded) before the model is loaded.
    - ``generate``: greedy continuations of the fixed prompt set (or ``prompts``) under "samples".
    """
    from .eval.generation import DEFAULT_MAX_NEW_TOKENS, PROMPT_SET_VERSION, generate_samples
    from .eval.tasks import load_task, resolve_task_names
    from .eval.zeroshot import build_requests, score_tasks

    task_names = resolve_task_names(tasks) if tasks else []
    if data is None and not task_names and not generate and not prompts:
        raise ValueError("nothing to evaluate: give data (perplexity), tasks, or generate=True")
    corpus = load_corpus(data, split, log=lambda m: _log(progress, m)) if isinstance(data, str) else data
    task_data = [load_task(t, limit=limit, data_dir=data_dir, source=task_source) for t in task_names]
    name, streamed = None, None
    if isinstance(model, (str, Path)):
        name = str(model)
        if offload == "disk":
            if task_names or generate or prompts:
                raise ValueError("zero-shot tasks and generation need the whole model in memory; drop --offload disk")
            model, tokenizer, _, streamed = open_streaming(name, dtype)
        else:
            model, tokenizer, _ = load_model(name, dtype)
            if device:
                model.to(device)
    if tokenizer is None:
        raise ValueError("evaluate() needs the tokenizer when given a loaded model")
    result: dict = {}
    if corpus is not None:
        result = _perplexity_result(model, tokenizer, name, corpus, seqlen, max_windows, batch_size, progress,
                                    device, streamed)
    if task_names:
        requests = [build_requests(tokenizer, t) for t in task_data]
        result["tasks"] = score_tasks(model, requests, batch_size=task_batch_size, progress=progress, details=details,
                                      share_context=share_context)
        result["task_protocol"] = {"limit": limit, "num_fewshot": 0, "batch_size": task_batch_size,
                                   "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    if generate or prompts:
        result["samples"] = generate_samples(model, tokenizer, prompts,
                                             max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        result["samples_prompt_set"] = "custom" if prompts else PROMPT_SET_VERSION
    if name is not None and (task_names or generate or prompts):
        result.setdefault("model", name)
        if "measured_sparsity" not in result:
            prior = read_record(name) if Path(name).is_dir() else None
            if prior is not None:
                result["recorded_sparsity"] = prior.get("summary", {}).get("sparsity")
            result["measured_sparsity"] = sparsity_summary(model)["sparsity"]
        result.update({"versions": package_versions(), "host": host_description(), "created": timestamp()})
    return result


def _perplexity_result(model, tokenizer, name, corpus: Corpus, seqlen, max_windows, batch_size, progress, device=None,
                       streamed=None) -> dict:
    if seqlen is None:
        seqlen = DEFAULT_EVAL_SEQLEN.get(name, 2048) if name else 2048
        seqlen = min(seqlen, getattr(model.config, "max_position_embeddings", seqlen) or seqlen)
    windows = corpus_windows(tokenizer, corpus, seqlen, max_windows)
    start = time.perf_counter()
    on_gpu = device is not None and torch.device(device).type == "cuda" and model_device(model).type == "cpu"
    if streamed is not None or on_gpu:
        result = blockwise_perplexity(model, windows, device=device or "cpu", source=streamed, progress=progress)
    else:
        result = perplexity(model, windows, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    result.update({"data": corpus.name, "split": corpus.split, "data_sha256": corpus.sha256,
                   "data_provenance": corpus.provenance,
                   "windows_sha256": tensor_sha256(windows), "max_windows": max_windows, "seconds": seconds,
                   "tokens_per_second": result["tokens"] / seconds if seconds > 0 else None})
    if name is not None:
        result["model"] = name
        prior = read_record(name) if Path(name).is_dir() else None
        if prior is not None:
            result["recorded_sparsity"] = prior.get("summary", {}).get("sparsity")
        if streamed is None:  # a streamed model's blocks are gone once evaluated
            result["measured_sparsity"] = sparsity_summary(model)["sparsity"]
    return result


def parse_run_spec(spec: str):
    """'wanda', 'wanda+dsnot', 'magnitude+refit', 'sparsegpt+owl', 'wanda+dsnot-h+refit+search' ->
    (algorithm name, PostSteps, allocation kind). Steps: a registered refinement, refit, and one allocation."""
    from .engine import PostSteps
    from .engine.allocation import KINDS
    from .steps import steps_of

    name, *steps = spec.split("+")
    refines = [s for s in steps if s in steps_of("refine")]
    allocations = [s for s in steps if s in KINDS]
    unknown = set(steps) - set(refines) - set(allocations) - {"refit"}
    if unknown or len(refines) > 1 or len(allocations) > 1:
        raise ValueError(f"bad step(s) in {spec!r}; steps are one refinement (+{', +'.join(steps_of('refine'))}), "
                         f"+refit, and one allocation (+owl, +search)")
    return name, PostSteps(refine=refines[0] if refines else None, refit="refit" in steps), \
        (allocations[0] if allocations else "uniform")


def parse_method_spec(spec: str):
    """'wanda', 'wanda+dsnot', 'magnitude+refit', 'wanda+dsnot+refit' -> (algorithm name, PostSteps)."""
    name, post, allocation = parse_run_spec(spec)
    if allocation != "uniform":
        raise ValueError(f"{spec!r}: an allocation (+{allocation}) applies to whole-model runs, not here")
    return name, post


def compare_layers(methods: list[str], *, model: str | None = None, sparsity: float | None = None,
                   pattern: str = "unstructured", calibration: CalibrationConfig | None = None,
                   device: str = "cpu", max_blocks: int | None = None, progress: bool = True,
                   checkpoint: str | Path | None = None) -> dict:
    """Reconstruction error of several methods per layer on the same dense activations, plus the optimum for
    each method's own support (see eval/reconstruction.py).

    ``checkpoint``: a JSON-lines file that receives each block's rows as soon as they are computed; a later call
    with the same methods, pattern, model and calibration tokens skips the blocks found there (an interrupted
    comparison resumes)."""
    import json
    from .eval.reconstruction import compare_layers as run_comparison

    entries, configs = [], []
    for spec in methods:
        name, post = parse_method_spec(spec)
        config = PruneConfig(method=name, model=model or DEFAULT_MODEL,
                             sparsity=sparsity, pattern=pattern, calibration=calibration, device=device,
                             refine=post.refine, refit=post.refit)
        configs.append(config)
        entries.append((spec, config.algorithm(), config.pattern_obj(), post))
    calib = configs[0].calibration
    corpus = load_corpus(calib.corpus, calib.split, log=lambda m: _log(progress, m))  # before the model load
    loaded, tokenizer, source = load_model(configs[0].model)
    segments, calib_info = calibration_data(tokenizer, calib, corpus)
    start = time.perf_counter()
    header = {"methods": methods, "pattern": configs[0].pattern_obj().to_dict(), "model": source.identity,
              "calibration_tokens": calib_info["tokens_sha256"]}
    done_rows = []
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        lines = checkpoint.read_text().splitlines() if checkpoint.is_file() else []
        if lines and json.loads(lines[0]) == header:
            for line in lines[1:]:
                try:
                    done_rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: that block is redone
                    break
        per_block = {}
        for r in done_rows:
            per_block.setdefault(r["block"], []).append(r)
        # keep only blocks whose rows are all there (every layer x method)
        done_rows = [r for b, rs in per_block.items() if len(rs) == max(len(x) for x in per_block.values())
                     for r in rs]
        # rewrite what is kept, so rows appended from here on never follow a line cut short
        checkpoint.write_text("".join(json.dumps(x) + "\n" for x in [header, *done_rows]))
        if done_rows:
            _log(progress, f"resuming from {checkpoint}: {len({r['block'] for r in done_rows})} blocks done")

    def save_block(block_rows):
        if checkpoint is not None:
            with open(checkpoint, "a") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in block_rows))
                fh.flush()
                os.fsync(fh.fileno())

    rows = run_comparison(loaded, entries, segments, device=device, max_blocks=max_blocks, progress=progress,
                          done_blocks={r["block"] for r in done_rows}, on_block=save_block)
    rows = sorted(done_rows + rows, key=lambda r: r["block"])
    return {"rows": rows, "methods": methods, "pattern": configs[0].pattern_obj().to_dict(),
            "model_source": {"kind": source.kind, **source.identity}, "calibration": calib_info,
            "seconds": time.perf_counter() - start, "versions": package_versions(), "host": host_description(),
            "created": timestamp()}
