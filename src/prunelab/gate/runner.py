"""The "runs in one pass" gate (seed 002, Table 4): does a pruning plug-in even run, correctly, on every family?

The plug-in runs only in worker processes (worker.py), never in this one: each is forked from a forkserver
that imported torch, transformers and prunelab once. Cases are every supported family's
tiny random model × {unstructured 50% (the method's default scope), 2:4}; each case must finish within
``timeout`` seconds or its worker is killed (with its whole process group) and the rest is not run. A worker
that dies (a crash, ``os._exit``) fails its case and a fresh worker takes the remaining ones. Checks:

    imports                        the file/module loads and defines one PruningAlgorithm subclass
    finishes in time               every case within the limit
    runs without error             no exception from the algorithm (the reason and traceback's last line kept)
    shapes unchanged               every parameter keeps its shape
    weights finite                 no NaN / inf anywhere
    sparsity exact                 each prunable layer has exactly the pattern's count of zeros
    N:M groups exact               2:4: every group of 4 consecutive inputs has exactly 2 zeros
    only prunable layers touched   nothing outside the decoder blocks' Linear layers (their weights and biases)
    same mask on a rerun           a second run with the same seed prunes the same weights
    loss finite                    the pruned tiny model's LM loss is finite

A check passes when it passed in every case; it fails with the first failing case's reason; it is "not run"
when an earlier failure made it impossible (e.g. after an import error). Passing means every check passed.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path

CHECKS = ("imports", "finishes in time", "runs without error", "shapes unchanged", "weights finite",
          "sparsity exact", "N:M groups exact", "only prunable layers touched", "same mask on a rerun", "loss finite")
LEVELS = ("0.5", "2:4")


def default_cases() -> list[str]:
    from ..models.tiny import FAMILY_NAMES
    return [f"{family}/{level}" for level in LEVELS for family in FAMILY_NAMES]


_CONTEXT = None


def _context():
    """A forkserver that has imported the heavy modules once; every worker is a fork of it (a clean process:
    the server itself never runs any torch computation, so forking it is safe)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["prunelab.gate.worker"])
    return _CONTEXT


class _Worker:
    def __init__(self, spec: str, cases: list[str]):
        from .worker import serve

        context = _context()
        self.stderr = tempfile.NamedTemporaryFile(prefix="prunelab-gate-", suffix=".log", delete=False)
        self.stderr.close()
        self.conn, child = context.Pipe(duplex=False)
        self.proc = context.Process(target=serve, args=(spec, cases, child, self.stderr.name), daemon=True)
        self.proc.start()
        child.close()

    def next(self, timeout: float):
        """The next event, None if the worker exited, or "timeout"."""
        try:
            if self.conn.poll(max(timeout, 0.01)):
                return self.conn.recv()
        except (EOFError, OSError):
            return None
        return "timeout"

    def kill(self):
        if self.proc.pid is not None:
            for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc.join()
        self.conn.close()

    def exit_code(self):
        self.proc.join(5)
        return self.proc.exitcode

    def last_stderr_line(self) -> str:
        self.proc.join(5)
        text = Path(self.stderr.name).read_text(errors="replace") if Path(self.stderr.name).exists() else ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""

    def cleanup(self):
        Path(self.stderr.name).unlink(missing_ok=True)


def check_algorithm(spec: str, timeout: float = 120.0, cases: list[str] | None = None,
                    import_timeout: float | None = None) -> dict:
    """Run the gate on ``spec``; returns {"passed", "checks": {name: {verdict, reason, traceback}}, "cases", ...}.

    ``timeout`` is per case (one tiny model, one pattern, both runs); ``import_timeout`` (default: the same)
    bounds the worker's start-up and the plug-in's import."""
    cases = list(cases or default_cases())
    started = time.perf_counter()
    result = {"spec": spec, "timeout_seconds": timeout, "cases": {}, "plugin": None}
    path = Path(spec.split(":")[0])
    if path.is_file():
        result["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    import_check = None
    pending = list(cases)
    timed_out = None
    while pending and timed_out is None and (import_check is None or import_check["ok"]):
        worker = _Worker(spec, pending)
        try:
            event = worker.next(import_timeout or timeout)
            if event == "timeout" or event is None:
                worker.kill()
                why = (f"importing took longer than {import_timeout or timeout:g} s" if event == "timeout" else
                       f"the worker exited during import (code {worker.exit_code()}): {worker.last_stderr_line()}")
                import_check = {"ok": False, "reason": why, "traceback": worker.last_stderr_line()}
                break
            import_check = {"ok": event["ok"], "reason": event.get("reason", ""), "traceback": event.get("traceback", "")}
            if not event["ok"]:
                break
            result["plugin"] = {k: event.get(k) for k in ("name", "qualname", "file")}
            case_started = time.perf_counter()
            while pending:
                event, case = worker.next(timeout), pending[0]
                if event == "timeout":
                    timed_out = case
                    result["cases"][case] = {"seconds": time.perf_counter() - case_started, "timed_out": True,
                                             "checks": {}}
                    pending.pop(0)
                    break
                if event is None:  # the worker died inside this case: fail it, a fresh worker takes the rest
                    result["cases"][case] = {"seconds": time.perf_counter() - case_started, "checks": {
                        "runs without error": {"ok": False, "reason": f"the worker process died (exit code "
                                               f"{worker.exit_code()}) during {case}",
                                               "traceback": worker.last_stderr_line()}}}
                    pending.pop(0)
                    break
                if event["event"] == "start":
                    case_started = time.perf_counter()
                elif event["event"] == "result":
                    result["cases"][event["case"]] = {"seconds": time.perf_counter() - case_started,
                                                      "checks": event["checks"]}
                    pending.remove(event["case"])
        finally:
            worker.kill()
            worker.cleanup()
    result["checks"] = _summarise(import_check, result["cases"], cases, timed_out, timeout)
    result["passed"] = all(c["verdict"] == "pass" for c in result["checks"].values())
    result["seconds"] = time.perf_counter() - started
    return result


def _summarise(import_check, case_results: dict, cases: list[str], timed_out: str | None, timeout: float) -> dict:
    out = {}
    if import_check is None or not import_check["ok"]:
        reason = (import_check or {}).get("reason", "the plug-in was not loaded")
        out["imports"] = {"verdict": "fail", "reason": reason, "traceback": (import_check or {}).get("traceback", "")}
        for name in CHECKS[1:]:
            out[name] = {"verdict": "not run", "reason": "the plug-in did not import", "traceback": ""}
        return out
    out["imports"] = {"verdict": "pass", "reason": "", "traceback": ""}
    out["finishes in time"] = ({"verdict": "fail", "reason": f"{timed_out} took longer than {timeout:g} s (killed); "
                                "later cases not run", "traceback": ""} if timed_out else
                               {"verdict": "pass", "reason": "", "traceback": ""})
    for name in CHECKS[2:]:
        relevant = [c for c in cases if name != "N:M groups exact" or ":" in c.split("/")[1]]
        failure = next(((c, case_results[c]["checks"][name]) for c in relevant if c in case_results
                        and case_results[c]["checks"].get(name, {}).get("ok") is False), None)
        missing = [c for c in relevant if c not in case_results or case_results[c]["checks"].get(name, {}).get("ok") is None]
        if failure:
            case, check = failure
            out[name] = {"verdict": "fail", "reason": f"{case}: {check['reason']}", "traceback": check["traceback"]}
        elif missing:
            blocker = next((case_results[c]["checks"].get("runs without error", {}).get("reason")
                            for c in missing if c in case_results
                            and case_results[c]["checks"].get("runs without error", {}).get("ok") is False), None)
            out[name] = {"verdict": "not run", "reason": f"{missing[0]}: " + (
                "timed out" if missing[0] == timed_out else blocker or "an earlier failure stopped this case"
                if missing[0] in case_results else "not reached"), "traceback": ""}
        else:
            out[name] = {"verdict": "pass", "reason": "", "traceback": ""}
    return out


def format_table(result: dict) -> str:
    """The printed table: one line per check with its verdict, reason and traceback's last line."""
    rows = [("check", "verdict", "reason", "traceback (last line)")]
    rows += [(name, c["verdict"].upper() if c["verdict"] == "fail" else c["verdict"], c["reason"], c["traceback"])
             for name, c in result["checks"].items()]
    width = [min(max(len(r[i]) for r in rows), limit) for i, limit in enumerate((28, 7, 80, 60))]
    lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(r, width)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in width))
    status = "PASSED" if result["passed"] else "REJECTED"
    plugin = (result.get("plugin") or {}).get("name") or result["spec"]
    return "\n".join(lines) + f"\n\n{plugin}: {status} ({len(result['cases'])} cases, {result['seconds']:.1f} s)"
