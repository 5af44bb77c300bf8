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

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..algorithms.base import algorithm_source
from ..config import (EMBEDDED_CALIBRATION, PAPER_CALIBRATION, DEFAULT_EVAL_SEQLEN, CalibrationConfig, PruneConfig,
                      devices_checked_where_runs_execute)
from ..models.loading import DEFAULT_MODEL
from ..record import package_versions
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
    speed: "SpeedSettings | None" = None  # measure every run with prunelab speed's settings (None: no speed)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("a sweep needs at least one method")
        if not self.models:
            raise ValueError("a sweep needs at least one model")
        if "unstructured" in self.patterns and not self.levels:
            raise ValueError("unstructured sweeps need at least one level")
        if self.speed is not None and self.dtype != self.speed.dtype:
            raise ValueError(f"speed is measured in the sweep's dtype ({self.dtype}); drop speed.dtype or match it")
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
        from ..api import parse_run_spec
        from .recovery import split_recovery

        # level-major order, so an interrupted sweep already holds whole rows of the level x method table
        specs = []
        for model in self.models:
            for calib in self.calibrations_for(model):
                for pattern in self.patterns:
                    for level in (self.levels if pattern == "unstructured" else (None,)):
                        for method in self.methods:
                            base, recovery = split_recovery(method)
                            name, post, allocation = parse_run_spec(base)
                            config = PruneConfig(method=name, model=model, sparsity=level, pattern=pattern,
                                                 method_options=self.method_options.get(name, {}),
                                                 calibration=calib, device=self.device, dtype=self.dtype,
                                                 refine=post.refine, refit=post.refit,
                                                 allocation=None if allocation == "uniform" else allocation)
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


def _loadavg() -> str | None:
    """The machine's load (1, 5, 15 min) as /proc/loadavg gives it: timings on a busy machine are slower."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


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
        bitmask += (int(torch.count_nonzero(p)) * p.element_size() + math.ceil(p.numel() / 8)) if id(p) in prunable else nbytes
    summary.update({"dense_checkpoint_bytes": dense, "bitmask_checkpoint_bytes": bitmask})
    return summary


def measure_speed(model, tokenizer, settings, save_to: Path | None = None) -> dict:
    """``prunelab speed``'s measurement of an in-memory model: saved (dense) to ``save_to`` or a temporary
    folder, then measured in a child process of its own, so its peak RSS and load are those of a real user."""
    import tempfile

    from ..eval.speed import SPEED_KEYS, measure_isolated
    from ..export import save_pruned

    def keep(result: dict) -> dict:
        return {**{k: result[k] for k in SPEED_KEYS}, **{k: result.get(k) for k in
                ("repeats", "costs", "threads", "rss_before_load_bytes", "peak_gpu_bytes", "generated_sha256")},
                "kernel": result["kernel"]["summary"], "settings": settings.to_dict()}

    if save_to is not None:
        return keep(measure_isolated(str(save_to), settings))
    with tempfile.TemporaryDirectory(prefix="prunelab-sweep-speed-") as tmp:
        folder = save_pruned(model, tokenizer, Path(tmp) / "model", {"prunelab_record": 1}, force=True)
        return keep(measure_isolated(str(folder), settings))


class Evaluator:
    """Everything a sweep measures on a model, with the inputs prepared once."""

    def __init__(self, model_name: str, model_or_config, tokenizer, protocol: EvalProtocol, inputs: dict | None = None):
        """``inputs``: what :func:`evaluation_inputs` loaded (loaded here if not given); ``model_or_config``: the
        model or just its config (a sweep's driver has no weights)."""
        from ..data import corpus_windows, tensor_sha256

        corpora, task_data = inputs or evaluation_inputs(protocol)
        self.protocol = protocol
        model_config = getattr(model_or_config, "config", model_or_config)
        seqlen = protocol.seqlen or DEFAULT_EVAL_SEQLEN.get(model_name, 2048)
        seqlen = min(seqlen, getattr(model_config, "max_position_embeddings", seqlen) or seqlen)
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

    def __call__(self, model, progress: bool = False, device=None) -> tuple[dict, str | None]:
        """Metrics of ``model``, and why the run must count as failed (None if it need not). On a CUDA
        ``device`` the perplexity is computed there, one block at a time (the model stays where it is)."""
        from ..eval import perplexity
        from ..eval.perplexity import blockwise_perplexity

        metrics: dict = {"perplexity": {}}
        problem = None
        on_gpu = device is not None and torch.device(device).type == "cuda"
        for corpus_name, windows in self.windows.items():
            if on_gpu:
                result = blockwise_perplexity(model, windows, device=device, progress=progress)
            else:
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


def _slug(text: str) -> str:
    """A file-name-safe form of a model name, method or level."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace(":", "of")).strip("-") or "x"


def save_name(model: str, spec: "RunSpec") -> str:
    """Folder name of a saved run: model, method, pattern, level and calibration seed, so no two runs of a
    sweep share one."""
    level = f"{spec.level:g}" if spec.pattern_label == "unstructured" else "nm"
    seed = spec.config.calibration.seed if spec.config.calibration else 0
    return "-".join(_slug(x) for x in (Path(model).name or model, spec.method, spec.pattern_label, level, f"seed{seed}"))


def compute_identity(cfg: PruneConfig) -> dict:
    """What decides a run's numbers besides its inputs: where and in which precision it is computed (CPU and GPU
    kernels round differently; the batch shape changes float sums)."""
    import torch

    from ..engine.linear import resolve_cpu_linear

    device = torch.device(cfg.device)
    calib = cfg.calibration
    compute_dtype = cfg.compute_dtype or cfg.dtype
    identity = {"device": device.type, "dtype": cfg.dtype, "compute_dtype": compute_dtype,
                "calib_batch": cfg.engine_options().batch_for(calib.seqlen, device) if calib else None}
    # oneDNN products round differently from aten's; aten runs keep the identity they always had
    kernel = resolve_cpu_linear(cfg.cpu_linear, device)
    if compute_dtype == "float32" and kernel == "onednn":  # the forwards' Linear layers (float32 only)
        identity["cpu_linear"] = "onednn"
    if kernel == "onednn":  # the XᵀX statistics, accumulated in float32 whatever the compute dtype
        identity["cpu_gram"] = "onednn"
        # the forwards' causal attention (engine/attention.py), float32 whatever the compute dtype; rows stored
        # before it existed were computed with sdpa's and are not reused
        identity["cpu_attention"] = "onednn-chunked"
    return identity


# settings not hashed as given: those that only place work (memory, disk) never change a result, and those that
# can (compute dtype, batch, CPU linear kernel) enter the identity resolved, through compute_identity
PLACEMENT_KEYS = ("model", "device", "offload", "offload_share", "max_activation_memory", "calib_batch_size",
                  "compute_dtype", "cpu_linear")


def plan_sweep(config: SweepConfig, *, progress: bool = False, log=print, store_path=None):
    """Every run of ``config`` as (RunTask, claim fields), dense evaluations first for each model. Only tokenizers
    and configs are loaded here (identities need calibration tokens and evaluation windows, not weights)."""
    from ..api import calibration_data
    from ..models.loading import load_config_and_tokenizer
    from .executors import RunTask

    from ..data import load_corpus

    versions = package_versions()
    key_versions = {k: versions.get(k) for k in KEY_PACKAGES}
    all_runs = config.runs()
    # Every input is found (or downloaded) before any model is touched, so a missing corpus fails in seconds.
    calib_corpora = {c: load_corpus(c.corpus, c.split, log=log) for c in dict.fromkeys(
        spec.config.calibration for spec in all_runs if spec.config.needs_calibration)}
    eval_inputs = evaluation_inputs(config.evaluation, log=log)
    plan = []
    speed = {"speed": config.speed.to_dict()} if config.speed is not None else {}  # part of every identity
    for model_name in config.models:
        model_config, tokenizer, source = load_config_and_tokenizer(model_name)
        model_identity = {"kind": source.kind, **{k: v for k, v in source.identity.items() if k != "path"}}
        evaluator = Evaluator(model_name, model_config, tokenizer, config.evaluation, eval_inputs)
        dense_cfg = PruneConfig(method="magnitude", model=model_name, sparsity=0.0, device=config.device,
                                dtype=config.dtype)
        dense_identity = {"model": model_identity, "dense": True, "dtype": config.dtype,
                          "compute": {"device": compute_identity(dense_cfg)["device"]},
                          "eval": evaluator.identity, "versions": key_versions, **speed}
        key = run_key(dense_identity)
        weights = run_key(model_identity)  # a worker reloads the model when this changes
        plan.append((RunTask(key, "dense", "dense", model_name, config.dtype, None, config.evaluation,
                             device=dense_cfg.device, progress=progress, weights=weights,
                             speed=speed.get("speed")),
                     dict(model=model_name, method="dense", pattern="dense", level=0.0, identity=dense_identity)))
        calibrations: dict = {}
        recovery_cache: dict = {}  # training data, prepared once per setting
        runs = [r for r in all_runs if r.config.model == model_name]
        snapshot_all = any(r.recovery for r in runs)  # fine-tuning trains embeddings and head too
        plan[-1] = (dataclasses.replace(plan[-1][0], snapshot_all=snapshot_all), plan[-1][1])
        for spec in runs:
            cfg = spec.config
            calib_identity = None
            if cfg.needs_calibration:
                if cfg.calibration not in calibrations:
                    calibrations[cfg.calibration] = calibration_data(tokenizer, cfg.calibration,
                                                                     calib_corpora[cfg.calibration])[1]
                # where the corpus was read from (a local path differs between hosts) is recorded, but does not
                # decide the result: its checksum and the token ids' checksum do
                calib_identity = {k: v for k, v in calibrations[cfg.calibration].items()
                                  if k not in ("provenance", "source")}
            prune_dict = {k: v for k, v in cfg.to_dict().items() if k not in PLACEMENT_KEYS}
            identity = {"model": model_identity, "method": spec.method, "prune": prune_dict,
                        "algorithm_options": cfg.algorithm().options(), "calibration": calib_identity,
                        "compute": compute_identity(cfg), "eval": evaluator.identity, "versions": key_versions,
                        **speed}
            source = algorithm_source(cfg.algorithm())
            if source is not None:  # a plug-in: its code is part of what decides the result
                identity["algorithm_source"] = {k: v for k, v in source.items() if k != "file"}
            if spec.recovery is not None:
                from . import recovery
                identity["recovery"] = recovery.identity(config.finetune, spec.recovery, tokenizer, recovery_cache)
            key = run_key(identity)
            plan.append((RunTask(key, spec.describe(), spec.method, model_name, config.dtype, cfg.to_dict(),
                                 config.evaluation, device=cfg.device, save_dir=config.save_dir,
                                 save_name=save_name(model_name, spec), progress=progress, weights=weights,
                                 imports=_plugin_modules(cfg), snapshot_all=snapshot_all, recovery=spec.recovery,
                                 finetune=config.finetune if spec.recovery else None, identity=identity,
                                 work_dir=str(Path(f"{store_path}.work") / key) if spec.recovery and store_path
                                 else None, speed=speed.get("speed")),
                         dict(model=model_name, method=spec.method, pattern=spec.pattern_label, level=spec.level,
                              identity=identity)))
    return plan


def _plugin_modules(cfg: PruneConfig) -> tuple[str, ...]:
    """The module of a run's algorithm when it is not prunelab's own, for workers in other processes to import."""
    module = type(cfg.algorithm()).__module__
    return () if module.split(".")[0] == "prunelab" else (module,)


def run_sweep(config: SweepConfig, store: ResultsStore, *, retry_failed: bool = False, progress: bool = False,
              log=print, executor=None) -> dict:
    """Run every run of ``config`` not yet ``done`` in ``store``; returns counts by outcome.

    ``executor``: where runs execute (default: this process, one at a time; bench/executors.py has Ray). This
    function is the only writer of the store: it claims each run before it is handed out and records what comes
    back. One line per run with the ETA of the whole sweep. Ctrl-C marks the runs in flight interrupted
    (rerunning the same command redoes them); a failing run is recorded as failed with its reason and the sweep
    goes on; a run whose worker died is recorded interrupted and redone by the next sweep.
    """
    from .executors import LocalExecutor, RunFailed

    executor = executor or LocalExecutor()
    with devices_checked_where_runs_execute() if executor.name != "local" else contextlib.nullcontext():
        plan = plan_sweep(config, progress=progress, log=log, store_path=store.path)
    fields = {task.key: f for task, f in plan}
    counts = {"done": 0, "failed": 0, "skipped": 0, "busy": 0, "interrupted": 0}
    timings: dict[str, list[float]] = {}
    total = len(plan)
    position = 0
    pending = [task.method for task, _ in plan if task.method != "dense"]  # for the ETA
    in_flight: set[str] = set()
    sweep_start = time.perf_counter()
    store.start_heartbeat()

    def eta() -> str:
        every = [t for ts in timings.values() for t in ts]
        if not every:
            return "ETA unknown"
        mean = sum(every) / len(every)
        left = sum((sum(timings[m]) / len(timings[m])) if m in timings else mean for m in pending)
        return f"ETA {_fmt_seconds(left / executor.slots)}"

    def claim(task) -> bool:
        nonlocal position
        skipped = store.claim(task.key, retry_failed=retry_failed, **fields[task.key])
        if skipped:
            position += 1
            counts["skipped" if skipped != "busy" else "busy"] += 1
            if task.method in pending:
                pending.remove(task.method)
            log(f"[{position}/{total}] {task.label}: {skipped} already, skipped")
            return False
        in_flight.add(task.key)
        return True

    try:
        for task, outcome in executor.run([task for task, _ in plan], claim):
            position += 1
            in_flight.discard(task.key)
            if task.method in pending:
                pending.remove(task.method)
            if isinstance(outcome, RunFailed):
                store.finish(task.key, "failed", reason=outcome.reason,
                             record={"traceback": outcome.trace, **outcome.record})
                counts["failed"] += 1
                log(f"[{position}/{total}] {task.label}: FAILED ({outcome.reason})")
                continue
            if isinstance(outcome, tuple):  # ("interrupted", reason): the worker died
                store.finish(task.key, "interrupted", reason=outcome[1])
                counts["interrupted"] += 1
                log(f"[{position}/{total}] {task.label}: INTERRUPTED ({outcome[1]})")
                continue
            problem = outcome.problem
            store.finish(task.key, "failed" if problem else "done", metrics=outcome.metrics, layers=outcome.layers,
                         record=outcome.record, reason=problem)
            counts["failed" if problem else "done"] += 1
            wall = outcome.record["wall_seconds"]
            if task.method != "dense":
                timings.setdefault(task.method, []).append(wall)
            ppl = "; ".join(f"{c} ppl {m['ppl']:.3f}" for c, m in outcome.metrics["perplexity"].items())
            status = f"FAILED ({problem})" if problem else (ppl or "done")
            log(f"[{position}/{total}] {task.label}: {status} | {wall:.0f} s | elapsed "
                f"{_fmt_seconds(time.perf_counter() - sweep_start)}, {eta()}")
    except KeyboardInterrupt:
        executor.shutdown()
        for key in in_flight:
            store.finish(key, "interrupted", reason="interrupted (Ctrl-C); rerun the sweep to redo it")
        raise
    finally:
        executor.shutdown()
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
              "save_dir", "store", "finetune", "speed"}
SPEED_KEYS_IN_FILE = {"batch", "prompt_len", "new_tokens", "repeats", "threads", "device", "kernel", "seed", "cache"}


def speed_settings_from(value, dtype: str):
    """``speed: true`` or ``speed: {batch, prompt_len, new_tokens, repeats, threads, device, kernel, seed}``."""
    from ..eval.speed import SpeedSettings

    if not value:
        return None
    if value is True:
        return SpeedSettings(dtype=dtype)
    if not isinstance(value, dict):
        raise ValueError(f"speed must be true or a mapping of {sorted(SPEED_KEYS_IN_FILE)}, got {value!r}")
    unknown = set(value) - SPEED_KEYS_IN_FILE
    if unknown:
        raise ValueError(f"unknown speed setting(s) {sorted(unknown)}; known: {sorted(SPEED_KEYS_IN_FILE)}")
    return SpeedSettings(dtype=dtype, **value)


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
        speed: {prompt_len: 512, new_tokens: 128, repeats: 5, threads: 2}   # or true: prunelab speed's defaults
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
                       finetune=dict(data.get("finetune") or {}),
                       speed=speed_settings_from(data.get("speed"), data.get("dtype", "float32")))


def _expand_tasks(value) -> tuple[str, ...]:
    tasks = _as_tuple(value)
    if tasks == ("all",):
        from ..eval import zeroshot
        return tuple(zeroshot.ALL_TASKS)
    return tasks


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: prunelab sweep")
