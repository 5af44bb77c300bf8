"""Where a sweep's runs execute: in the sweep's own process, or as Ray tasks on a cluster.

A run is a pure function of its ``RunTask`` (model, dtype, prune config, evaluation protocol): ``execute``
loads what it needs (kept per process, so consecutive runs on one worker reuse the model, its calibration tokens
and evaluation windows), restores the pristine weights, prunes, evaluates and returns the numbers. It never
touches the results store: the sweep's driver alone writes it, whichever executor ran the work.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

RAY_INSTALL = 'pip install "prunelab[ray]"'


@dataclass(frozen=True)
class RunTask:
    key: str
    label: str  # "dense", "wanda 0.5", "sparsegpt 2:4"
    method: str  # as the user wrote it (wanda+dsnot), or "dense"
    model: str
    dtype: str
    config: dict | None  # PruneConfig.to_dict(); None for the dense evaluation
    evaluation: object  # EvalProtocol
    device: str | None = None
    save_dir: str | None = None
    save_name: str | None = None
    progress: bool = False
    threads: int | None = None  # torch threads in the worker (None: leave as is)
    weights: str | None = None  # the model's identity hash: a worker reloads the model when it changes
    imports: tuple[str, ...] = ()  # modules defining (and registering) the run's algorithm outside prunelab
    snapshot_all: bool = False  # the sweep fine-tunes: restore every parameter, not only the blocks'
    recovery: object = None  # bench.recovery.Recovery of a +ft / +lora / +iter run
    finetune: dict | None = None  # the sweep's fine-tuning settings
    identity: dict | None = None  # the run's identity (a fine-tuning checkpoint is tied to it)
    work_dir: str | None = None  # where a fine-tuning run keeps its checkpoints (resumable)
    speed: dict | None = None  # SpeedSettings as a dict: also measure the model with prunelab speed


@dataclass
class RunOutcome:
    metrics: dict
    layers: list | None
    record: dict
    problem: str | None  # why the run counts as failed although it finished (non-finite perplexity)


class RunFailed(Exception):
    """A run raised: its reason and traceback, as plain strings (they cross process boundaries)."""

    def __init__(self, reason: str, trace: str, record: dict):
        super().__init__(reason)
        self.reason, self.trace, self.record = reason, trace, record


# -- the worker side ------------------------------------------------------------------------------------------
_LOADED: dict = {}  # (model, dtype) -> (model, tokenizer, snapshot): one model at a time per process
_CALIBRATION: dict = {}
_EVALUATORS: dict = {}
_RECOVERY: dict = {}  # fine-tuning data, prepared once per setting


def _loaded(model_name: str, dtype: str, weights: str | None, snapshot_all: bool):
    from ..models import load_model
    from .sweep import _parameter_snapshot

    key = (model_name, dtype, weights, snapshot_all)
    if key not in _LOADED:
        release_cached()
        model, tokenizer, _ = load_model(model_name, dtype)
        _LOADED[key] = (model, tokenizer, _parameter_snapshot(model, everything=snapshot_all))
    return _LOADED[key]


def release_cached() -> None:
    """Forget the models, calibration tokens and evaluation windows this process keeps between runs."""
    _LOADED.clear()
    _CALIBRATION.clear()
    _EVALUATORS.clear()
    _RECOVERY.clear()


def execute(task: RunTask) -> RunOutcome:
    """Run one task in this process. Raises RunFailed when the run itself fails (a result to record);
    KeyboardInterrupt and system errors propagate."""
    from ..record import host_description, package_versions
    from .sweep import Evaluator, _loadavg, _peak_rss_bytes, _reset_peak_rss, _restore

    if task.threads:
        torch.set_num_threads(task.threads)
    for module in task.imports:  # a plug-in algorithm registers itself when its module is imported
        importlib.import_module(module)
    started = time.perf_counter()
    load_start = _loadavg()
    _reset_peak_rss()
    versions = package_versions()
    try:
        model, tokenizer, snapshot = _loaded(task.model, task.dtype, task.weights, task.snapshot_all)
        _restore(model, snapshot)
        ekey = (task.model, task.evaluation)
        if ekey not in _EVALUATORS:
            _EVALUATORS[ekey] = Evaluator(task.model, model, tokenizer, task.evaluation)
        evaluator = _EVALUATORS[ekey]
        if task.config is None:
            outcome = _dense(model, evaluator, task)
        else:
            outcome = _prune(model, tokenizer, evaluator, task)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:
        raise RunFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                        {"versions": versions, "host": host_description()}) from None
    outcome.record.update({"wall_seconds": time.perf_counter() - started, "peak_rss_bytes": _peak_rss_bytes(),
                           "versions": versions, "host": host_description(),
                           "loadavg": {"start": load_start, "end": _loadavg()}})
    return outcome


def _dense(model, evaluator, task: RunTask) -> RunOutcome:
    from .sweep import size_summary

    started = time.perf_counter()
    metrics, problem = evaluator(model, task.progress, device=task.device)
    metrics["size"] = size_summary(model)
    record = {"eval_seconds": time.perf_counter() - started, "prune_seconds": 0.0}
    _speed(model, evaluator.tokenizer, task, metrics, record, None)
    return RunOutcome(metrics, None, record, problem)


def _speed(model, tokenizer, task: RunTask, metrics: dict, record: dict, saved_to: Path | None) -> None:
    """prunelab speed's figures of the run's model, when the sweep asks for them (--speed)."""
    if task.speed is None:
        return
    from ..eval.speed import SpeedSettings
    from .sweep import measure_speed

    started = time.perf_counter()
    metrics["speed"] = measure_speed(model, tokenizer, SpeedSettings(**task.speed), save_to=saved_to)
    record["speed_seconds"] = time.perf_counter() - started


def _prune(model, tokenizer, evaluator, task: RunTask) -> RunOutcome:
    from ..api import calibration_data
    from ..config import PruneConfig
    from ..engine import prune_model
    from .sweep import size_summary

    cfg = PruneConfig.from_dict(task.config)
    cfg.check_device()
    algorithm = cfg.algorithm()
    calibration, calib_identity = None, None
    if cfg.needs_calibration:
        if cfg.calibration not in _CALIBRATION:
            _CALIBRATION[cfg.calibration] = calibration_data(tokenizer, cfg.calibration)
        calibration, calib_identity = _CALIBRATION[cfg.calibration]
    engine: dict = {}
    recovered = allocation = None
    started = time.perf_counter()
    if task.recovery is not None:  # prune (one-shot or iteratively) and fine-tune; prune_seconds: both
        from . import recovery
        layers, recovered = recovery.run(model, tokenizer, cfg, task.recovery, task.finetune, calibration,
                                         cache=_RECOVERY, work=Path(task.work_dir) if task.work_dir else None,
                                         run_identity=task.identity, progress=task.progress)
    else:
        allocation = cfg.allocation_obj() if cfg.allocation is not None else None
        layers = prune_model(model, algorithm, cfg.pattern_obj(), calibration, device=cfg.device,
                             progress=task.progress, post=cfg.post_steps(), options=cfg.engine_options(), info=engine,
                             allocation=allocation)
    prune_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics, problem = evaluator(model, task.progress, device=cfg.device)
    eval_seconds = time.perf_counter() - started
    metrics["size"] = size_summary(model)
    errors = [r.reconstruction_error for r in layers if r.reconstruction_error is not None]
    if errors:
        metrics["mean_reconstruction_error"] = sum(errors) / len(errors)
    record = {"prune_seconds": prune_seconds, "eval_seconds": eval_seconds, "config": cfg.to_dict(),
              "algorithm_options": algorithm.options(), "calibration": calib_identity, "engine": engine,
              **(recovered or {}), **({"allocation": allocation.info} if allocation is not None else {})}
    if task.save_dir:
        from ..export import save_pruned

        out = Path(task.save_dir) / task.save_name
        save_pruned(model, tokenizer, out, {"prunelab_record": 1, **record, "metrics": metrics}, force=True)
        record["saved_to"] = str(out)
        metrics["size"]["saved_safetensors_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    if not problem:
        _speed(model, tokenizer, task, metrics, record, Path(record["saved_to"]) if task.save_dir else None)
    return RunOutcome(metrics, [r.to_dict() for r in layers], record, problem)


# -- executors ------------------------------------------------------------------------------------------------
class LocalExecutor:
    """Runs each task in this process, one after the other (torch uses this process's threads)."""
    name = "local"
    slots = 1

    def run(self, tasks, claim):
        """Yield (task, outcome) for every task that ``claim(task)`` accepts; outcome is a RunOutcome, a
        RunFailed, or ("interrupted", reason) when the worker died."""
        for task in tasks:
            if not claim(task):
                continue
            try:
                yield task, execute(task)
            except RunFailed as failed:
                yield task, failed

    def shutdown(self) -> None:
        release_cached()  # the sweep is over: its model need not stay in memory


def _remote_execute(task: RunTask):
    """What a Ray worker runs: the outcome, or the RunFailed (returned, not raised: a run's failure is a result)."""
    try:
        return execute(task)
    except RunFailed as failed:
        return failed


class RayExecutor:
    """Each task is a Ray task with ``cpus_per_run`` CPUs (its torch threads) and ``gpus_per_run`` GPUs. Tasks are
    not retried by Ray: a worker that dies leaves its run ``interrupted``, redone by the next sweep."""
    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0,
                 init_kwargs: dict | None = None):
        try:
            import ray
        except ImportError:
            raise ImportError(f"--executor ray needs Ray, which is not installed; install it with: {RAY_INSTALL}") from None
        if cpus_per_run < 1 or gpus_per_run < 0:
            raise ValueError("--cpus-per-run must be >= 1 and --gpus-per-run >= 0")
        self.ray = ray
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        if not ray.is_initialized():
            import os
            env = {k: os.environ[k] for k in ("PRUNELAB_DATA", "PRUNELAB_CACHE", "PYTHONPATH", "HF_HOME",
                                                "HF_HUB_OFFLINE") if k in os.environ}
            ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                     **(init_kwargs or {}))
        self._remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_remote_execute)
        self._pending: dict = {}
        total = ray.cluster_resources().get("CPU", 1)
        self.slots = max(1, int(total // cpus_per_run))

    def run(self, tasks, claim):
        ray = self.ray
        for task in tasks:
            if claim(task):
                task = dataclasses.replace(task, threads=self.cpus_per_run)
                self._pending[self._remote.remote(task)] = task
        while self._pending:
            ready, _ = ray.wait(list(self._pending), num_returns=1)
            ref = ready[0]
            task = self._pending.pop(ref)
            try:
                yield task, ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # should not happen (execute returns failures), but if so
                yield task, RunFailed(f"{type(exc.cause).__name__}: {exc.cause}", str(exc), {})
            except ray.exceptions.RayError as exc:  # the worker or its node died: redo the run later
                yield task, ("interrupted", f"Ray worker lost ({type(exc).__name__}); rerun the sweep to redo it")

    def shutdown(self) -> None:
        for ref in list(self._pending):
            self.ray.cancel(ref, force=True)
        self._pending.clear()


def make_executor(kind: str = "local", address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0):
    if kind == "local":
        if address or gpus_per_run:
            raise ValueError("--ray-address and --gpus-per-run go with --executor ray")
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address, cpus_per_run, gpus_per_run)
    raise ValueError(f"unknown executor {kind!r}; choose local or ray")
