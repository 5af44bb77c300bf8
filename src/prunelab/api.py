"""The Python API: ``prunelab.prune`` and ``prunelab.evaluate``. The CLI only wraps these."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEFAULT_EVAL_SEQLEN, CalibrationConfig, PruneConfig
from .data import calibration_segments, evaluation_windows, load_corpus, tensor_sha256, tokenize_stream
from .engine import prune_model
from .eval import perplexity
from .export import check_output_dir, read_record, save_pruned
from .models import DEFAULT_MODEL, ModelAdapter, load_model
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
        zeros += int((w == 0).sum())
        total += w.numel()
    seen, nonzero, params = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        params += p.numel()
        nonzero += int((p != 0).sum())
    return {"prunable_params": total, "prunable_zeros": zeros, "sparsity": zeros / total if total else 0.0,
            "total_params": params, "nonzero_params": nonzero}


def calibration_data(tokenizer, calib: CalibrationConfig) -> tuple[torch.Tensor, dict]:
    corpus = load_corpus(calib.corpus, calib.split)
    segments = calibration_segments(tokenizer, corpus, calib.samples, calib.seqlen, calib.seed)
    info = {"corpus": calib.corpus, "split": calib.split, "source": corpus.source, "data_sha256": corpus.sha256,
            "samples": calib.samples, "seqlen": calib.seqlen, "seed": calib.seed,
            "tokens_sha256": tensor_sha256(segments)}
    return segments, info


def prune(config: PruneConfig | None = None, *, out: str | Path | None = None, force: bool = False,
          eval_data: str | None = None, eval_seqlen: int | None = None, eval_windows: int | None = None,
          progress: bool = True, **config_fields) -> PruneResult:
    """Load, calibrate, prune and (with ``out``) save a model; optionally evaluate its perplexity.

    ``prune(method="wanda", sparsity=0.5)`` builds the PruneConfig from keyword arguments.
    """
    config = config or PruneConfig(**config_fields)
    if out is not None:
        check_output_dir(out, force)
    pattern = config.pattern_obj()
    algorithm = config.algorithm()
    started = time.perf_counter()
    model, tokenizer, source = load_model(config.model, config.dtype, config.trust_remote_code)
    load_seconds = time.perf_counter() - started
    _log(progress, f"loaded {config.model} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
                   f"params, {config.dtype}) in {load_seconds:.1f}s")

    calibration, calib_info = None, None
    if config.needs_calibration:
        calib = config.calibration
        _log(progress, f"calibration: {calib.samples} x {calib.seqlen} tokens from {calib.corpus}/{calib.split}, seed {calib.seed}")
        calibration, calib_info = calibration_data(tokenizer, calib)
    _log(progress, f"pruning with {config.method}, {pattern.describe()}, on {config.device}")
    start = time.perf_counter()
    layers = prune_model(model, algorithm, pattern, calibration, device=config.device, progress=progress,
                         post=config.post_steps())
    prune_seconds = time.perf_counter() - start
    summary = sparsity_summary(model)
    errors = [r.reconstruction_error for r in layers if r.reconstruction_error is not None]
    if errors:
        summary["mean_reconstruction_error"] = sum(errors) / len(errors)
    _log(progress, f"pruned in {prune_seconds:.1f}s: sparsity {summary['sparsity']:.4f} of "
                   f"{summary['prunable_params'] / 1e6:.1f}M prunable weights"
                   + (f", mean layer reconstruction error {summary['mean_reconstruction_error']:.4f}" if errors else ""))

    record = {
        "prunelab_record": 1,
        "created": timestamp(),
        "config": config.to_dict(),
        "algorithm_options": algorithm.options(),
        "model_source": {"kind": source.kind, "location": source.location, **source.identity},
        "calibration": calib_info,
        "summary": summary,
        "prune_seconds": prune_seconds,
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "layers": [r.to_dict() for r in layers],
        "versions": package_versions(),
        "host": host_description(),
    }
    if eval_data:
        record["eval"] = {eval_data: evaluate(model, tokenizer=tokenizer, data=eval_data, seqlen=eval_seqlen,
                                              max_windows=eval_windows, progress=progress)}
    result = PruneResult(model, tokenizer, record)
    if out is not None:
        result.out = save_pruned(model, tokenizer, out, record, force=force)
        _log(progress, f"saved to {result.out}")
    return result


def evaluate(model, *, tokenizer=None, data: str = "wikitext2", split: str = "test", seqlen: int | None = None,
             max_windows: int | None = None, batch_size: int = 1, dtype: str = "float32",
             device: str | None = None, progress: bool = True) -> dict:
    """Perplexity of ``model`` (a loaded model with ``tokenizer``, or anything ``load_model`` accepts)."""
    name = None
    if isinstance(model, (str, Path)):
        name = str(model)
        model, tokenizer, _ = load_model(name, dtype)
        if device:
            model.to(device)
    if tokenizer is None:
        raise ValueError("evaluate() needs the tokenizer when given a loaded model")
    if seqlen is None:
        seqlen = DEFAULT_EVAL_SEQLEN.get(name, 2048) if name else 2048
        seqlen = min(seqlen, getattr(model.config, "max_position_embeddings", seqlen) or seqlen)
    corpus = load_corpus(data, split)
    windows = evaluation_windows(tokenize_stream(tokenizer, corpus), seqlen, max_windows)
    start = time.perf_counter()
    result = perplexity(model, windows, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    result.update({"data": data, "split": split, "data_sha256": corpus.sha256,
                   "windows_sha256": tensor_sha256(windows), "max_windows": max_windows, "seconds": seconds,
                   "tokens_per_second": result["tokens"] / seconds if seconds > 0 else None})
    if name is not None:
        result["model"] = name
        prior = read_record(name) if Path(name).is_dir() else None
        if prior is not None:
            result["recorded_sparsity"] = prior.get("summary", {}).get("sparsity")
        result["measured_sparsity"] = sparsity_summary(model)["sparsity"]
    return result


def parse_method_spec(spec: str):
    """'wanda', 'wanda+dsnot', 'magnitude+refit', 'wanda+dsnot+refit' -> (algorithm name, PostSteps)."""
    from .engine import PostSteps

    name, *steps = spec.split("+")
    unknown = set(steps) - {"dsnot", "refit"}
    if unknown:
        raise ValueError(f"unknown step(s) {sorted(unknown)} in {spec!r}; steps are +dsnot and +refit")
    return name, PostSteps(refine="dsnot" if "dsnot" in steps else None, refit="refit" in steps)


def compare_layers(methods: list[str], *, model: str | None = None, sparsity: float | None = None,
                   pattern: str = "unstructured", calibration: CalibrationConfig | None = None,
                   device: str = "cpu", max_blocks: int | None = None, progress: bool = True) -> dict:
    """Reconstruction error of several methods per layer on the same dense activations, plus the optimum for
    each method's own support (see eval/reconstruction.py)."""
    from .eval.reconstruction import compare_layers as run_comparison

    entries, configs = [], []
    for spec in methods:
        name, post = parse_method_spec(spec)
        config = PruneConfig(method=name, model=model or DEFAULT_MODEL,
                             sparsity=sparsity, pattern=pattern, calibration=calibration, device=device,
                             refine=post.refine, refit=post.refit)
        configs.append(config)
        entries.append((spec, config.algorithm(), config.pattern_obj(), post))
    loaded, tokenizer, source = load_model(configs[0].model)
    segments, calib_info = calibration_data(tokenizer, configs[0].calibration)
    start = time.perf_counter()
    rows = run_comparison(loaded, entries, segments, device=device, max_blocks=max_blocks, progress=progress)
    return {"rows": rows, "methods": methods, "pattern": configs[0].pattern_obj().to_dict(),
            "model_source": {"kind": source.kind, **source.identity}, "calibration": calib_info,
            "seconds": time.perf_counter() - start, "versions": package_versions(), "host": host_description(),
            "created": timestamp()}
