"""The gate's worker process: loads one plug-in and runs the checks on tiny models, one case at a time.

``serve(spec, cases, conn)`` runs in a child process forked from a forkserver that has already imported torch,
transformers and prunelab (this module), so each plug-in gets a fresh process in well under a second. It
sends events over ``conn`` ("import", then "start" and "result" per case; CASE = family/level, e.g.
llama/0.5, gpt2/2:4); the plug-in's own prints go to stderr (a file the parent reads for the last line).
Everything the plug-in does runs here; the parent only reads events, with a deadline per case (runner.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
import threading
import traceback
from pathlib import Path

import tqdm.std

import torch  # noqa: F401  (imported once in the forkserver, shared by every worker)
import transformers  # noqa: F401

import prunelab.engine  # noqa: F401
from prunelab.models.tiny import CONFIGS

# tqdm would create a multiprocessing lock (a named semaphore) in each worker, which a killed worker leaks.
tqdm.std.tqdm.set_lock(threading.RLock())

# Import every family's model class here too (seconds of lazy imports), so that each forked worker starts warm.
for _make in CONFIGS.values():
    transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING[type(_make())]

SEED = 0
CALIBRATION = (4, 16)  # tiny calibration: sequences x tokens of random ids


def last_line(exc: BaseException) -> str:
    """The traceback's last line, as Python prints it ("ValueError: boom")."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def load_plugin(spec: str):
    """``path/to/file.py`` (its one PruningAlgorithm subclass), ``file.py:Class`` or ``module:Class``."""
    from prunelab.algorithms.base import PruningAlgorithm

    target, _, class_name = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    if target.endswith(".py") or Path(target).is_file():
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        module_name = f"prunelab_plugin_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if class_name:
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, PruningAlgorithm)):
            raise TypeError(f"{spec}: {class_name} is not a PruningAlgorithm subclass")
        return cls
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, PruningAlgorithm)
             and v is not PruningAlgorithm and v.__module__ == module.__name__]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise TypeError(f"{spec} must define exactly one PruningAlgorithm subclass, found {len(found)} ({names}); "
                        f"name one with PATH:Class")
    return found[0]


def run_case(cls, family: str, level: str) -> dict:
    """Every check of one case: {check: {"ok": bool|None, "reason": str, "traceback": str}} (None: not run)."""
    import torch

    from prunelab.engine import prune_model
    from prunelab.engine.sequential import InvalidWeight
    from prunelab.models import ModelAdapter
    from prunelab.models.tiny import random_ids, tiny_model
    from prunelab.patterns import Pattern

    checks: dict[str, dict] = {}

    def verdict(name, ok, reason="", tb=""):
        checks[name] = {"ok": ok, "reason": reason, "traceback": tb}

    def prune_once():
        random.seed(SEED)
        torch.manual_seed(SEED)
        model = tiny_model(family)
        algorithm = cls()
        if not getattr(algorithm, "name", None):
            algorithm.name = cls.__name__
        pattern = Pattern(n=2, m=4) if ":" in level else Pattern(float(level), scope=algorithm.default_scope)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        prune_model(model, algorithm, pattern, random_ids(*CALIBRATION), progress=False)
        return model, before, pattern

    try:
        model, before, pattern = prune_once()
    except InvalidWeight as exc:
        verdict("runs without error", True)
        verdict("shapes unchanged", exc.shape_ok, "" if exc.shape_ok else str(exc), last_line(exc))
        verdict("weights finite", exc.finite, "" if exc.finite or exc.finite is None else str(exc), last_line(exc))
        return checks
    except Exception as exc:  # the plug-in's own failure is a verdict, not a crash of the gate
        verdict("runs without error", False, f"raised {type(exc).__name__}: {exc}", last_line(exc))
        return checks
    verdict("runs without error", True)
    adapter = ModelAdapter(model)
    params = dict(model.named_parameters())
    bad_shape = [n for n, p in params.items() if p.shape != before[n].shape]
    verdict("shapes unchanged", not bad_shape, f"{bad_shape[0]}: {tuple(before[bad_shape[0]].shape)} -> "
            f"{tuple(params[bad_shape[0]].shape)}" if bad_shape else "")
    bad_values = [n for n, p in params.items() if not torch.isfinite(p).all()]
    verdict("weights finite", not bad_values, f"{bad_values[0]} has NaN or inf" if bad_values else "")
    prunable = {f"{n}.weight" for n, _ in adapter.named_prunable_layers()}
    prunable |= {f"{n}.bias" for n, layer in adapter.named_prunable_layers() if getattr(layer, "bias", None) is not None}
    touched = [n for n, p in params.items() if n not in prunable and not torch.equal(p, before[n])]
    verdict("only prunable layers touched", not touched, f"{touched[0]} changed, but only the Linear layers inside "
            f"decoder blocks may be" if touched else "")

    wrong_count, wrong_groups = [], []
    for name, layer in adapter.named_prunable_layers():
        w = adapter.get_weight(layer)
        rows, cols = w.shape
        zeros = w.numel() - int(torch.count_nonzero(w))
        if pattern.is_nm:
            expected = rows * cols * pattern.n // pattern.m
            groups = (w == 0).reshape(rows, cols // pattern.m, pattern.m).sum(-1)
            if not bool((groups == pattern.n).all()):
                bad = (groups != pattern.n).nonzero()[0].tolist()
                wrong_groups.append(f"{name}: row {bad[0]}, group {bad[1]} has {int(groups[bad[0], bad[1]])} zeros "
                                    f"of {pattern.m}, expected {pattern.n}")
        elif pattern.scope == "row":
            expected = rows * int(cols * pattern.sparsity)
        else:
            expected = int(rows * cols * pattern.sparsity)
        if zeros != expected:
            wrong_count.append(f"{name}: {zeros} zeros, expected {expected} ({pattern.describe()})")
    verdict("sparsity exact", not wrong_count, wrong_count[0] if wrong_count else "")
    if pattern.is_nm:
        verdict("N:M groups exact", not wrong_groups, wrong_groups[0] if wrong_groups else "")

    with torch.no_grad():
        ids = random_ids(2, 16, seed=7)
        loss = model(input_ids=ids, labels=ids).loss
    verdict("loss finite", bool(torch.isfinite(loss)), f"tiny model loss after pruning is {float(loss)}"
            if not torch.isfinite(loss) else "")
    try:
        again, _, _ = prune_once()
    except Exception as exc:
        verdict("same mask on a rerun", False, f"the second run raised {type(exc).__name__}: {exc}", last_line(exc))
        return checks
    second = dict(ModelAdapter(again).named_prunable_layers())
    differ = [n for n, layer in adapter.named_prunable_layers()
              if not torch.equal(adapter.get_weight(layer) == 0, adapter.get_weight(second[n]) == 0)]
    verdict("same mask on a rerun", not differ, f"{differ[0]}: a second run with the same seed pruned other "
            f"weights" if differ else "")
    return checks


def serve(spec: str, cases: list[str], conn, stderr_path: str) -> None:
    """The child's whole life: own session (so the parent can kill everything it starts), output to a file."""
    os.setsid()
    err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(err, 1)
    os.dup2(err, 2)
    sys.stdout = sys.stderr = os.fdopen(err, "w", buffering=1)
    try:
        cls = load_plugin(spec)
    except BaseException as exc:  # SyntaxError, SystemExit at import, ... : all import failures
        traceback.print_exc()
        conn.send({"event": "import", "ok": False, "reason": f"{type(exc).__name__}: {exc}",
                   "traceback": last_line(exc)})
        return
    conn.send({"event": "import", "ok": True, "name": getattr(cls, "name", None) or cls.__name__,
               "qualname": cls.__qualname__, "file": getattr(sys.modules.get(cls.__module__), "__file__", None)})
    for case in cases:
        family, level = case.split("/")
        conn.send({"event": "start", "case": case})
        try:
            checks = run_case(cls, family, level)
        except BaseException as exc:  # anything escaping the checks themselves (SystemExit in the plug-in, ...)
            traceback.print_exc()
            checks = {"runs without error": {"ok": False, "reason": f"raised {type(exc).__name__}: {exc}",
                                             "traceback": last_line(exc)}}
        conn.send({"event": "result", "case": case, "checks": checks})
