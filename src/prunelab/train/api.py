"""``prunelab.finetune`` and ``prunelab.iterative``: load, fine-tune or prune iteratively, save; resumable.

Both write the model only when the run is complete (export.save_pruned stages it), keep checkpoints in a work
folder beside ``out`` (checkpoint.py) and record what decides the result next to it: the full configs, the model's
checksums, the training data's checksum and train/held-out split, calibration token checksum, versions and the
torch thread count (a resumed run must use the same, or its floating-point sums would differ).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import torch

from ..config import CalibrationConfig, PruneConfig
from ..export import json_safe, read_record, save_pruned
from ..models import DEFAULT_MODEL, load_model
from ..models.loading import sha256_file
from ..record import host_description, package_versions, peak_rss_bytes, timestamp
from .checkpoint import WorkDir, work_dir_for
from .data import training_data
from .trainer import FinetuneConfig
from .loop import IterativeConfig, run_steps


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[prunelab] {message}", flush=True)


def _model_identity(name: str, source) -> dict:
    identity = {"kind": source.kind, **source.identity}
    if source.kind == "folder":  # the weights themselves, not just config.json
        folder = Path(source.location)
        identity["weights_sha256"] = {f.name: sha256_file(f) for f in sorted(folder.iterdir())
                                      if f.suffix in (".safetensors", ".bin")}
    return identity


def _run_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(json_safe(identity), sort_keys=True).encode()).hexdigest()[:24]


def _versions() -> dict:
    import importlib.metadata

    versions = package_versions()
    try:
        versions["peft"] = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        versions["peft"] = None
    return versions


def _finished(out: Path, run_id: str, force: bool) -> dict | None:
    """The record of ``out`` if it already holds this very run; an error if it holds something else (no force)."""
    if not out.exists():
        return None
    record = read_record(out)
    if record is not None and record.get("run_id") == run_id:
        return record
    if not force:
        raise FileExistsError(f"{out} already exists (and is not the result of this same command); "
                              "pass --force (force=True) to overwrite it")
    return None


def _eval_fn(tokenizer, data, seqlen, windows, progress):
    if not data:
        return None
    from ..api import evaluate

    def run(model):
        result = evaluate(model, tokenizer=tokenizer, data=data, seqlen=seqlen, max_windows=windows, progress=progress)
        return {data: {k: result[k] for k in ("ppl", "nll", "seqlen", "windows", "tokens", "data_sha256",
                                              "windows_sha256", "seconds") if k in result}}
    return run


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _train_totals(steps_record: dict) -> dict:
    logs = [s["finetune"] for s in steps_record["steps"]]
    seconds = sum(log["seconds"] for log in logs)
    tokens = sum(log["tokens"] for log in logs)
    return {"optimizer_steps": sum(log["steps"] for log in logs), "tokens": tokens, "train_seconds": seconds,
            "train_cpu_seconds": sum(log["cpu_seconds"] for log in logs),
            "tokens_per_second": tokens / seconds if seconds else None,
            "trainable_params": logs[-1]["trainable_params"], "adamw_state_bytes": logs[-1]["adamw_state_bytes"],
            "resumed_at": [(s["step"], log["resumed_at"]) for s, log in zip(steps_record["steps"], logs)
                           if log["resumed_at"]]}


def _execute(out, force, identity, progress, body):
    """Common frame: finished check, work folder, run, save, clean up."""
    out = Path(out)
    run_id = _run_id(identity)
    done = _finished(out, run_id, force)
    workdir = WorkDir(work_dir_for(out), identity)
    if done is not None:
        workdir.remove()
        _log(progress, f"{out} already holds this run (run_id {run_id}); nothing to do")
        return done
    resume = workdir.load(force)
    if resume is not None:
        _log(progress, f"resuming from the checkpoint in {workdir.path} (pruning step {resume['k'] + 1}, stage "
                       f"{resume['stage']}, optimizer step {(resume.get('phase') or {}).get('step', 0)})")
    started, cpu_started, load_start = time.perf_counter(), time.process_time(), _loadavg()
    model, tokenizer, record = body(workdir, resume)
    record.update({"run_id": run_id, "created": timestamp(), "wall_seconds_this_process": time.perf_counter() - started,
                   "cpu_seconds_this_process": time.process_time() - cpu_started,
                   "loadavg_start_end": [load_start, _loadavg()], "peak_rss_bytes": peak_rss_bytes(),
                   "versions": _versions(), "host": host_description()})
    save_pruned(model, tokenizer, out, record, force=True)
    workdir.remove()
    _log(progress, f"saved to {out}")
    return record


def _teacher_of(model: str, source_record: dict | None, teacher: str | None) -> str:
    """The dense model to distil from: ``teacher`` if given, else the model the pruned folder was pruned from."""
    if teacher is not None:
        return teacher
    origin = ((source_record or {}).get("config") or {}).get("model")
    if origin is None:
        raise ValueError(f"distillation needs the dense teacher and {model} has no prunelab record naming the model "
                         "it was pruned from; pass --teacher MODEL (teacher=...)")
    return origin


def finetune(model: str = DEFAULT_MODEL, *, out: str | Path, config: FinetuneConfig | None = None,
             teacher: str | None = None, force: bool = False, progress: bool = True, dtype: str = "float32",
             eval_data: str | None = None,
             eval_seqlen: int | None = None, eval_windows: int | None = None, checkpoint_every: int | None = None,
             checkpoint_minutes: float | None = 5.0, stop_after: int | None = None, **config_fields) -> dict:
    """Fine-tune ``model`` (a pruned folder, or anything load_model reads) keeping its zeros; save it to ``out``.

    ``finetune("runs/wanda50", out="runs/wanda50-ft", tokens=40_000, lora=16)`` builds the FinetuneConfig from
    keyword arguments. Returns the saved record (``record["finetune"]`` has losses, held-out losses, the data split,
    sparsity before and after). With ``distill`` > 0 the teacher is ``teacher`` or, by default, the model the
    pruned folder's record says it was pruned from."""
    config = config or FinetuneConfig(**config_fields)
    loaded, tokenizer, source = load_model(model, dtype)
    data = training_data(tokenizer, config.train, config.split, config.seqlen, config.heldout_fraction,
                         config.heldout_windows, seed=config.seed)
    source_record = read_record(model) if Path(model).is_dir() else None
    teacher_model, teacher_identity = None, None
    if config.distill:
        teacher_name = _teacher_of(model, source_record, teacher)
        teacher_model, _, teacher_source = load_model(teacher_name, dtype)
        teacher_identity = {"model": str(teacher_name), **_model_identity(teacher_name, teacher_source)}
    identity = {"kind": "finetune", "model": _model_identity(model, source), "finetune": config.to_dict(),
                "data": data.identity, "dtype": dtype, "eval": [eval_data, eval_seqlen, eval_windows],
                "versions": {k: v for k, v in _versions().items() if k in ("torch", "transformers", "peft")},
                "torch_threads": torch.get_num_threads()}
    if teacher_identity is not None:  # only then, so runs without distillation keep their identities
        identity["teacher"] = teacher_identity

    def body(workdir, resume):
        from ..api import sparsity_summary

        before = sparsity_summary(loaded)
        _log(progress, f"fine-tuning {model}: {config.total_steps} steps x {config.batch} x {config.seqlen} tokens "
                       f"({'LoRA r=%d, %s' % (config.lora, config.lora_merge) if config.lora else 'full'}) on "
                       f"{data.identity['train_windows']} train windows of {config.train}; sparsity {before['sparsity']:.4f}")
        evaluate = _eval_fn(tokenizer, eval_data, eval_seqlen, eval_windows, progress)
        tuned, steps_record, masks = run_steps(loaded, data, config, workdir=workdir, resume=resume,
                                               progress=progress, checkpoint_every=checkpoint_every,
                                               checkpoint_minutes=checkpoint_minutes, stop_after=stop_after,
                                               teacher=teacher_model)
        after = sparsity_summary(tuned)
        step = steps_record["steps"][0]
        record = dict(source_record or {"prunelab_record": 1})
        if "eval" in record:
            record["eval_before_finetune"] = record.pop("eval")
        previous = record.pop("finetune", None)
        record["finetune"] = {
            "config": config.to_dict(), "data": {**data.identity, "provenance": data.provenance},
            "source": {"model": str(model), **identity["model"]}, "teacher": teacher_identity,
            "losses": step["finetune"]["losses"], "heldout": step["finetune"]["heldout"],
            "lora_merge": step["finetune"].get("lora_merge"), **_train_totals(steps_record),
            "sparsity_before": before["sparsity"], "sparsity_after": after["sparsity"],
            "zeros_before": before["prunable_zeros"], "zeros_after": after["prunable_zeros"],
            "mask_kept_exactly": before["prunable_zeros"] == after["prunable_zeros"] == masks.zeros,
            "gradient_checkpointing": config.gradient_checkpointing, "torch_threads": torch.get_num_threads(),
            "previous": previous}
        record["summary"] = after
        if evaluate is not None:
            record["eval"] = evaluate(tuned)
        return tuned, tokenizer, record

    return _execute(out, force, identity, progress, body)


def iterative(model: str = DEFAULT_MODEL, *, method: str, target: float, out: str | Path,
              finetune: FinetuneConfig, schedule: str = "cubic", steps: int | None = None, rate: float | None = None,
              threshold: float | None = None, scope: str | None = None, method_options: dict | None = None,
              calibration: CalibrationConfig | None = None, device: str | None = None, dtype: str = "float32",
              force: bool = False, progress: bool = True, eval_data: str | None = None, eval_seqlen: int | None = None,
              eval_windows: int | None = None, checkpoint_every: int | None = None,
              checkpoint_minutes: float | None = 5.0, stop_after: int | None = None,
              final_share: float | None = None) -> dict:
    """Prune ``model`` to ``target`` in steps following ``schedule`` (or ``rate`` / ``threshold``), fine-tuning
    after each step with ``finetune`` (its budget is the total over all steps: split evenly, or ``final_share`` of
    it after the last step), and save the result to ``out``.
    With ``finetune.distill`` > 0 every phase distils from the dense ``model`` as loaded."""
    from ..api import calibration_data, sparsity_summary

    prune_config = PruneConfig(method=method, model=model, sparsity=target, scope=scope,
                               method_options=method_options or {}, calibration=calibration, device=device, dtype=dtype)
    config = IterativeConfig(prune_config, schedule, steps, rate, threshold, final_share)
    loaded, tokenizer, source = load_model(model, dtype)
    teacher = copy.deepcopy(loaded) if finetune.distill else None  # the dense model, before any pruning step
    data = training_data(tokenizer, finetune.train, finetune.split, finetune.seqlen, finetune.heldout_fraction,
                         finetune.heldout_windows, seed=finetune.seed)
    calib, calib_info = (calibration_data(tokenizer, prune_config.calibration) if prune_config.needs_calibration
                         else (None, None))
    prune_dict = {k: v for k, v in prune_config.to_dict().items() if k != "device"}
    identity = {"kind": "iterative", "model": _model_identity(model, source), "prune": prune_dict,
                "algorithm_options": prune_config.algorithm().options(), "iterative": config.to_dict(),
                "calibration": calib_info, "finetune": finetune.to_dict(), "data": data.identity,
                "eval": [eval_data, eval_seqlen, eval_windows],
                "versions": {k: v for k, v in _versions().items() if k in ("torch", "transformers", "peft")},
                "torch_threads": torch.get_num_threads()}

    def body(workdir, resume):
        _log(progress, f"iterative {method} to {target:g}: targets "
                       f"{', '.join(f'{t:.4f}' for t in config.targets())}; fine-tuning {finetune.total_steps} steps "
                       f"x {finetune.batch} x {finetune.seqlen} tokens in total")
        evaluate = _eval_fn(tokenizer, eval_data, eval_seqlen, eval_windows, progress)
        tuned, steps_record, masks = run_steps(loaded, data, finetune, iterative=config, calibration=calib,
                                               workdir=workdir, resume=resume, evaluate=evaluate, progress=progress,
                                               checkpoint_every=checkpoint_every,
                                               checkpoint_minutes=checkpoint_minutes, stop_after=stop_after,
                                               teacher=teacher)
        summary = sparsity_summary(tuned)
        record = {"prunelab_record": 1, "kind": "iterative", "config": prune_config.to_dict(),
                  "algorithm_options": prune_config.algorithm().options(),
                  "model_source": {"kind": source.kind, "location": source.location, **source.identity},
                  "calibration": calib_info,
                  "iterative": {**config.to_dict(), "initial": steps_record["initial"],
                                "phase_steps": steps_record["phase_steps"], "steps_record": steps_record["steps"]},
                  "finetune": {"config": finetune.to_dict(), "data": {**data.identity, "provenance": data.provenance},
                               **_train_totals(steps_record),
                               "torch_threads": torch.get_num_threads()},
                  "summary": summary}
        if steps_record["steps"] and "eval" in steps_record["steps"][-1]:
            record["eval"] = steps_record["steps"][-1]["eval"]
        return tuned, tokenizer, record

    return _execute(out, force, identity, progress, body)
