"""Sweeps: methods × levels × patterns (× models × calibration settings), run into a results store.

What is computed once and reused, and why the numbers stay those of independent runs:
- the model is loaded once per model and its parameters snapshotted; before every run they are copied back,
  so each run starts from the same bytes ``prunelab prune`` would load (pruning is deterministic given the
  weights, the calibration tokens and the config);
- calibration segments are drawn once per calibration setting: they depend only on tokenizer, corpus and seed;
- evaluation windows (and zero-shot requests) are tokenized once: they depend only on tokenizer and data;
- the dense model is evaluated once per store and protocol (its own ``dense`` row, never redone).
Nothing is saved to disk unless ``save_dir`` is given, which also saves the write and re-load of a
``prune`` + ``eval`` pair.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import EMBEDDED_CALIBRATION, PAPER_CALIBRATION, DEFAULT_EVAL_SEQLEN, CalibrationConfig, PruneConfig
from ..models.loading import DEFAULT_MODEL
from ..record import host_description, package_versions
from .store import ResultsStore, run_key

DEFAULT_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# Versions that can change a result; a run recorded under other versions is a different run.
KEY_PACKAGES = ("prunelab", "torch", "transformers", "tokenizers")


@dataclass(frozen=True)
class EvalProtocol:
    """What every run of a sweep is measured with."""
    perplexity: tuple[str, ...] = ("wikitext2",)
    split: str = "test"
    seqlen: int | None = None  # None: 512 for the embedded model, else 2048 (capped by the model's context)
    windows: int | None = None  # None: all windows
    tasks: tuple[str, ...] = ()
    task_limit: int | None = None
    generate: bool = False
    batch_size: int = 1

    def __post_init__(self):
        if not self.perplexity and not self.tasks and not self.generate:
            raise ValueError("a sweep needs at least one evaluation: perplexity corpora, tasks or generation")
        for value, name in ((self.seqlen, "seqlen"), (self.windows, "windows"), (self.task_limit, "task limit")):
            if value is not None and value < 1:
                raise ValueError(f"evaluation {name} must be >= 1, got {value}")


@dataclass(frozen=True)
class SweepConfig:
    methods: tuple[str, ...]
    levels: tuple[float, ...] = DEFAULT_LEVELS
    patterns: tuple[str, ...] = ("unstructured",)
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    calibrations: tuple[CalibrationConfig, ...] | None = None  # None: the model's default setting
    method_options: dict = field(default_factory=dict)  # method name -> {option: value}
    evaluation: EvalProtocol = EvalProtocol()
    device: str | None = None
    dtype: str = "float32"
    save_dir: str | None = None
    finetune: dict = field(default_factory=dict)  # settings of +ft / +lora / +iter runs (bench/recovery.py)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("a sweep needs at least one method")
        if not self.models:
            raise ValueError("a sweep needs at least one model")
        if "unstructured" in self.patterns and not self.levels:
            raise ValueError("unstructured sweeps need at least one level")
        for run in self.runs():  # builds (and so validates) every run's PruneConfig before any work
            if run.recovery is not None:
                from .recovery import identity as recovery_identity
                recovery_identity(self.finetune, run.recovery)  # and its fine-tuning settings

    def calibrations_for(self, model: str) -> tuple[CalibrationConfig, ...]:
        if self.calibrations:
            return self.calibrations
        n, seqlen = EMBEDDED_CALIBRATION if model == DEFAULT_MODEL else PAPER_CALIBRATION
        return (CalibrationConfig(samples=n, seqlen=seqlen),)

    def runs(self) -> list["RunSpec"]:
        from ..api import parse_method_spec
        from .recovery import split_recovery

        # level-major order, so an interrupted sweep already holds whole rows of the level x method table
        specs = []
        for model in self.models:
            for calib in self.calibrations_for(model):
                for pattern in self.patterns:
                    for level in (self.levels if pattern == "unstructured" else (None,)):
                        for method in self.methods:
                            base, recovery = split_recovery(method)
                            name, post = parse_method_spec(base)
                            config = PruneConfig(method=name, model=model, sparsity=level, pattern=pattern,
                                                 method_options=self.method_options.get(name, {}),
                                                 calibration=calib, device=self.device, dtype=self.dtype,
                                                 refine=post.refine, refit=post.refit)
                            specs.append(RunSpec(method, config, recovery))
        return specs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSpec:
    method: str  # as the user wrote it, steps included (wanda+dsnot)
    config: PruneConfig
    recovery: object = None  # bench.recovery.Recovery for +ft / +lora / +iter runs

    @property
    def pattern_label(self) -> str:
        return self.config.pattern

    @property
    def level(self) -> float:
        return self.config.pattern_obj().target_sparsity

    def describe(self) -> str:
        where = f"{self.level:g}" if self.pattern_label == "unstructured" else self.pattern_label
        return f"{self.method} {where}"


def _parameter_snapshot(model, everything: bool = False) -> dict[str, torch.Tensor]:
    """A copy of what pruning can change: the parameters of the decoder blocks (weights, biases, norms).
    Embeddings and the head are never pruned, so they are not copied (a smaller snapshot), unless ``everything``
    (a sweep with fine-tuning runs, which train them too)."""
    from ..models.adapters import ModelAdapter

    params = model.named_parameters() if everything else ModelAdapter(model).blocks.named_parameters()
    return {name: p.detach().clone() for name, p in params}


def _restore(model, snapshot: dict[str, torch.Tensor]) -> None:
    from ..models.adapters import ModelAdapter

    params = dict(model.named_parameters())  # full names ("model.embed_tokens.weight") never look like
    blocks = dict(ModelAdapter(model).blocks.named_parameters())  # names inside the blocks ("0.mlp.up_proj.weight")
    with torch.no_grad():
        for name, value in snapshot.items():
            (params[name] if name in params else blocks[name]).copy_(value)


def _reset_peak_rss() -> None:
    """Linux lets a process reset its high-water mark (VmHWM), so each run reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    from ..record import peak_rss_bytes
    return peak_rss_bytes()


def size_summary(model) -> dict:
    """Non-zero parameters and checkpoint sizes: the dense safetensors payload (zeros stored) and the payload
    of a bitmask format (one bit per weight of a pruned layer plus its non-zero values); computed from the
    tensors, not measured files."""
    from ..api import sparsity_summary
    from ..models.adapters import ModelAdapter

    summary = sparsity_summary(model)
    prunable = {id(layer.weight) for _, layer in ModelAdapter(model).named_prunable_layers()}
    dense = bitmask = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied embeddings are stored once
            continue
        seen.add(id(p))
        nbytes = p.numel() * p.element_size()
        dense += nbytes
        bitmask += (int((p != 0).sum()) * p.element_size() + math.ceil(p.numel() / 8)) if id(p) in prunable else nbytes
    summary.update({"dense_checkpoint_bytes": dense, "bitmask_checkpoint_bytes": bitmask})
    return summary


class Evaluator:
    """Everything a sweep measures on a model, with the inputs prepared once."""

    def __init__(self, model_name: str, model, tokenizer, protocol: EvalProtocol, inputs: dict | None = None):
        """``inputs``: what :func:`evaluation_inputs` loaded (loaded here if not given)."""
        from ..data import corpus_windows, tensor_sha256

        corpora, task_data = inputs or evaluation_inputs(protocol)
        self.protocol = protocol
        seqlen = protocol.seqlen or DEFAULT_EVAL_SEQLEN.get(model_name, 2048)
        seqlen = min(seqlen, getattr(model.config, "max_position_embeddings", seqlen) or seqlen)
        self.seqlen = seqlen
        self.windows, self.identity = {}, {"protocol": dataclasses.asdict(protocol), "seqlen": seqlen, "data": {}}
        for corpus_name, corpus in corpora.items():
            windows = corpus_windows(tokenizer, corpus, seqlen, protocol.windows)
            self.windows[corpus_name] = windows
            self.identity["data"][corpus_name] = {"sha256": corpus.sha256, "windows_sha256": tensor_sha256(windows)}
        self.task_requests = None
        if protocol.tasks:
            from ..eval import zeroshot

            self.task_requests = [zeroshot.build_requests(tokenizer, task) for task in task_data]
            self.identity["tasks"] = {r.name: r.identity() for r in self.task_requests}
        self.tokenizer = tokenizer

    def __call__(self, model, progress: bool = False) -> tuple[dict, str | None]:
        """Metrics of ``model``, and why the run must count as failed (None if it need not)."""
        from ..eval import perplexity

        metrics: dict = {"perplexity": {}}
        problem = None
        for corpus_name, windows in self.windows.items():
            result = perplexity(model, windows, batch_size=self.protocol.batch_size, progress=progress)
            metrics["perplexity"][corpus_name] = result
            if not result["finite"] and problem is None:
                problem = f"perplexity on {corpus_name} is not finite ({result['ppl']}; mean NLL {result['nll']})"
        if self.task_requests:
            from ..eval import zeroshot

            metrics["tasks"] = zeroshot.score_tasks(model, self.task_requests, batch_size=None, progress=progress)
        if self.protocol.generate:
            from ..eval import generation

            metrics["samples"] = generation.generate_samples(model, self.tokenizer)
        return metrics, problem


def evaluation_inputs(protocol: EvalProtocol, log=None) -> tuple[dict, list]:
    """The protocol's perplexity corpora and task data, found locally or downloaded (no model needed)."""
    from ..data import load_corpus
    from ..eval.tasks import load_task

    corpora = {name: load_corpus(name, protocol.split, log=log) for name in protocol.perplexity}
    return corpora, [load_task(task, limit=protocol.task_limit) for task in protocol.tasks]


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run_sweep(config: SweepConfig, store: ResultsStore, *, retry_failed: bool = False, progress: bool = False,
              log=print) -> dict:
    """Run every run of ``config`` not yet ``done`` in ``store``; returns counts by outcome.

    One line per run with the ETA of the whole sweep. Ctrl-C marks the current run interrupted (rerunning
    the same command redoes it); a failing run is recorded as failed with its reason and the sweep goes on.
    """
    from ..api import calibration_data
    from ..engine import prune_model
    from ..models import load_model

    all_runs = config.runs()
    versions = package_versions()
    key_versions = {k: versions.get(k) for k in KEY_PACKAGES}
    counts = {"done": 0, "failed": 0, "skipped": 0, "busy": 0}
    timings: dict[str, list[float]] = {}
    total = len(all_runs) + len(config.models)  # one dense row per model
    position = 0
    pending = [r.method for r in all_runs]  # methods of the runs not yet reached, for the ETA
    sweep_start = time.perf_counter()

    def eta(remaining: list[str]) -> str:
        every = [t for ts in timings.values() for t in ts]
        if not every:
            return "ETA unknown"
        mean = sum(every) / len(every)
        left = sum((sum(timings[m]) / len(timings[m])) if m in timings else mean for m in remaining)
        return f"ETA {_fmt_seconds(left)}"

    # Every input is found (or downloaded) before the first model load, so a missing corpus fails in seconds.
    from ..data import load_corpus
    calib_corpora = {c: load_corpus(c.corpus, c.split, log=log) for c in dict.fromkeys(
        spec.config.calibration for spec in all_runs if spec.config.needs_calibration)}
    eval_inputs = evaluation_inputs(config.evaluation, log=log)
    for model_name in config.models:
        model, tokenizer, source = load_model(model_name, config.dtype)
        model_identity = {"kind": source.kind, **{k: v for k, v in source.identity.items() if k != "path"}}
        runs = [r for r in all_runs if r.config.model == model_name]
        snapshot = _parameter_snapshot(model, everything=any(r.recovery for r in runs))
        evaluator = Evaluator(model_name, model, tokenizer, config.evaluation, eval_inputs)
        recovery_cache: dict = {}  # training data, prepared once per setting
        host = host_description()

        def execute(key, label, method, pattern, level, identity, work):
            nonlocal position
            position += 1
            skipped = store.claim(key, model=model_name, method=method, pattern=pattern, level=level,
                                  identity=identity, retry_failed=retry_failed)
            if skipped:
                counts["skipped" if skipped != "busy" else "busy"] += 1
                log(f"[{position}/{total}] {label}: {skipped} already, skipped")
                return
            started = time.perf_counter()
            _reset_peak_rss()
            try:
                outcome = work()
            except KeyboardInterrupt:
                store.finish(key, "interrupted", reason="interrupted (Ctrl-C); rerun the sweep to redo it")
                raise
            except Exception as exc:  # a failing run is a result; the sweep goes on
                reason = f"{type(exc).__name__}: {exc}"
                store.finish(key, "failed", reason=reason, record={"traceback": traceback.format_exc(),
                                                                    "versions": versions, "host": host})
                counts["failed"] += 1
                log(f"[{position}/{total}] {label}: FAILED ({reason})")
                return
            metrics, layers, record, problem = outcome
            wall = time.perf_counter() - started
            record.update({"wall_seconds": wall, "peak_rss_bytes": _peak_rss_bytes(), "versions": versions,
                           "host": host})
            store.finish(key, "failed" if problem else "done", metrics=metrics, layers=layers, record=record,
                         reason=problem)
            counts["failed" if problem else "done"] += 1
            timings.setdefault(method, []).append(wall)
            ppl = "; ".join(f"{c} ppl {m['ppl']:.3f}" for c, m in metrics["perplexity"].items())
            status = f"FAILED ({problem})" if problem else (ppl or "done")
            log(f"[{position}/{total}] {label}: {status} | {wall:.0f} s | elapsed "
                f"{_fmt_seconds(time.perf_counter() - sweep_start)}, {eta(pending)}")

        def dense_work():
            _restore(model, snapshot)
            started = time.perf_counter()
            metrics, problem = evaluator(model, progress)
            metrics["size"] = size_summary(model)
            return metrics, None, {"eval_seconds": time.perf_counter() - started, "prune_seconds": 0.0}, problem

        dense_identity = {"model": model_identity, "dense": True, "dtype": config.dtype,
                          "eval": evaluator.identity, "versions": key_versions}
        execute(run_key(dense_identity), "dense", "dense", "dense", 0.0, dense_identity, dense_work)

        calibration_cache: dict[CalibrationConfig, tuple] = {}
        for spec in runs:
            cfg = spec.config
            algorithm = cfg.algorithm()
            calib_identity = None
            if cfg.needs_calibration:
                if cfg.calibration not in calibration_cache:
                    calibration_cache[cfg.calibration] = calibration_data(tokenizer, cfg.calibration,
                                                                          calib_corpora[cfg.calibration])
                # where the corpus was read from is recorded, but does not decide the result (its checksum does)
                calib_identity = {k: v for k, v in calibration_cache[cfg.calibration][1].items() if k != "provenance"}
            prune_dict = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "device")}
            identity = {"model": model_identity, "method": spec.method, "prune": prune_dict,
                        "algorithm_options": algorithm.options(), "calibration": calib_identity,
                        "eval": evaluator.identity, "versions": key_versions}
            if spec.recovery is not None:
                from . import recovery
                identity["recovery"] = recovery.identity(config.finetune, spec.recovery, tokenizer, recovery_cache)

            def work(spec=spec, cfg=cfg, algorithm=algorithm, identity=identity):
                _restore(model, snapshot)
                calibration = calibration_cache[cfg.calibration][0] if cfg.needs_calibration else None
                started = time.perf_counter()
                recovered = None
                if spec.recovery is not None:  # prune (one-shot or iteratively) and fine-tune; prune_seconds: both
                    from . import recovery
                    layers, recovered = recovery.run(
                        model, tokenizer, cfg, spec.recovery, config.finetune, calibration, cache=recovery_cache,
                        work=Path(f"{store.path}.work") / run_key(identity), run_identity=identity, progress=progress)
                else:
                    layers = prune_model(model, algorithm, cfg.pattern_obj(), calibration, device=cfg.device,
                                         progress=progress, post=cfg.post_steps())
                prune_seconds = time.perf_counter() - started
                started = time.perf_counter()
                metrics, problem = evaluator(model, progress)
                eval_seconds = time.perf_counter() - started
                metrics["size"] = size_summary(model)
                errors = [r.reconstruction_error for r in layers if r.reconstruction_error is not None]
                if errors:
                    metrics["mean_reconstruction_error"] = sum(errors) / len(errors)
                record = {"prune_seconds": prune_seconds, "eval_seconds": eval_seconds, "config": cfg.to_dict(),
                          "algorithm_options": algorithm.options(),
                          "calibration": calibration_cache[cfg.calibration][1] if cfg.needs_calibration else None,
                          **(recovered or {})}
                if config.save_dir:
                    from ..export import save_pruned
                    out = Path(config.save_dir) / f"{spec.method}-{spec.describe().split()[-1].replace(':', 'of')}"
                    save_pruned(model, tokenizer, out, {"prunelab_record": 1, **record, "metrics": metrics},
                                force=True)
                    record["saved_to"] = str(out)
                    metrics["size"]["saved_safetensors_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
                return metrics, [r.to_dict() for r in layers], record, problem

            pending.pop(0)
            execute(run_key(identity), spec.describe(), spec.method, spec.pattern_label, spec.level, identity, work)
        _restore(model, snapshot)
        del model, snapshot
    counts["seconds"] = time.perf_counter() - sweep_start
    return counts


def load_sweep_file(path: str | Path) -> dict:
    """A sweep file (YAML or TOML) as a dict of the same names as the CLI flags."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        import yaml
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of sweep settings")
        return data
    raise ValueError(f"sweep file {path} must end in .yaml, .yml or .toml")


def _as_tuple(value, cast=str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(cast(v.strip() if isinstance(v, str) else v) for v in value)


SWEEP_KEYS = {"methods", "levels", "patterns", "models", "calibration", "options", "eval", "device", "dtype",
              "save_dir", "store", "finetune"}


def sweep_config_from_dict(data: dict) -> SweepConfig:
    """Build a SweepConfig from a sweep file's mapping (unknown keys are errors, so typos do not pass silently).

        methods: [magnitude, wanda, sparsegpt]
        levels: [0.1, 0.5, 0.9]          # default: 0.01 0.05 0.1 0.2 ... 0.9 0.95 0.99
        patterns: [unstructured, "2:4"]
        models: [smollm2-135m]
        calibration: {corpus: c4, samples: 64, seqlen: 512, seeds: [0]}
        options: {sparsegpt: {blocksize: 64}}
        finetune: {tokens: 40000, lr: 1e-4, iter_steps: 5}   # for methods with +ft, +lora, +iter (bench/recovery.py)
        eval: {perplexity: [wikitext2], seqlen: 512, windows: 128, tasks: [], limit: null, generate: false}
    """
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"unknown sweep setting(s) {sorted(unknown)}; known: {sorted(SWEEP_KEYS)}")
    calibrations = None
    if data.get("calibration"):
        c = dict(data["calibration"])
        bad = set(c) - {"corpus", "split", "samples", "seqlen", "seed", "seeds"}
        if bad:
            raise ValueError(f"unknown calibration setting(s) {sorted(bad)}")
        seeds = _as_tuple(c.pop("seeds", None), int) or (int(c.pop("seed", 0)),)
        c.pop("seed", None)
        corpus = c.get("corpus", "c4")
        split = c.get("split") or ("train" if corpus == "c4" else "validation")
        models = _as_tuple(data.get("models"), str) or (DEFAULT_MODEL,)
        n_default, len_default = EMBEDDED_CALIBRATION if models == (DEFAULT_MODEL,) else PAPER_CALIBRATION
        calibrations = tuple(CalibrationConfig(corpus, split, int(c.get("samples") or n_default),
                                               int(c.get("seqlen") or len_default), seed) for seed in seeds)
    e = dict(data.get("eval") or {})
    bad = set(e) - {"perplexity", "split", "seqlen", "windows", "tasks", "limit", "generate", "batch_size"}
    if bad:
        raise ValueError(f"unknown eval setting(s) {sorted(bad)}")
    protocol = EvalProtocol(perplexity=_as_tuple(e.get("perplexity", "wikitext2")), split=e.get("split", "test"),
                            seqlen=e.get("seqlen"), windows=e.get("windows"), tasks=_expand_tasks(e.get("tasks")),
                            task_limit=e.get("limit"), generate=bool(e.get("generate", False)),
                            batch_size=int(e.get("batch_size", 1)))
    return SweepConfig(methods=_as_tuple(data.get("methods")),
                       levels=_as_tuple(data.get("levels"), float) or DEFAULT_LEVELS,
                       patterns=_as_tuple(data.get("patterns")) or ("unstructured",),
                       models=_as_tuple(data.get("models")) or (DEFAULT_MODEL,), calibrations=calibrations,
                       method_options=dict(data.get("options") or {}), evaluation=protocol,
                       device=data.get("device"), dtype=data.get("dtype", "float32"), save_dir=data.get("save_dir"),
                       finetune=dict(data.get("finetune") or {}))


def _expand_tasks(value) -> tuple[str, ...]:
    tasks = _as_tuple(value)
    if tasks == ("all",):
        from ..eval import zeroshot
        return tuple(zeroshot.ALL_TASKS)
    return tasks


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: prunelab sweep")
