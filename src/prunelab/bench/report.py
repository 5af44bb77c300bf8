"""Reports from a results store: Markdown plus one self-contained HTML page (plots as inline SVG).

Tables follow the seeds: perplexity per level × method (seed 000, Tables I–III; NA where a run failed, the
reason in a note), running time per algorithm (seed 002, Table 7), an end-to-end table (seed 002, Table 8),
size per level, zero-shot accuracy and generated text per level (seed 000, Table V) when the sweep measured
them, and a leaderboard of algorithms at 50/60/70% and 2:4 with their author (human | generated) and the
plug-ins that failed the check-algorithm gate (seed 002, Tables 4, 7, 8). Every number is read from a stored
run; nothing is recomputed here.
"""
from __future__ import annotations

import html
import io
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .store import ResultsStore


@dataclass
class Cell:
    text: str
    note: str | None = None  # why it is NA
    best: bool = False


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)


def _num(v):
    if isinstance(v, str):  # stored non-finite floats
        return float(v)
    return v


def _fmt(v, digits=3) -> str:
    v = _num(v)
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:,.{digits}f}" if abs(v) >= 1e4 else f"{v:.{digits}f}"


def level_label(row: dict) -> str:
    if row["method"] == "dense":
        return "0.00 (dense)"
    return f"{row['level']:.2f}" if row["pattern"] == "unstructured" else row["pattern"]


def _seed(row: dict) -> int | None:
    """The calibration seed of a run (None for runs without calibration, or filed by a script whose identity
    does not spell the calibration as a sweep does, e.g. benchmarks/zoo.py's structured rows: a list of flags)."""
    calibration = (row.get("identity") or {}).get("calibration") or {}
    return calibration.get("seed") if isinstance(calibration, dict) else None


def _level_order(label: str) -> tuple:
    if label.startswith("0.00"):
        return (0, 0.0)
    if ":" in label:
        n, m = label.split(":")
        return (2, int(n) / int(m), int(m))
    return (1, float(label))


def _method_order(rows: list[dict]) -> list[str]:
    seen = []
    for r in sorted(rows, key=lambda r: r.get("seq", 0)):  # the sweep's own order, not timestamps (ties)
        if r["method"] != "dense" and r["method"] not in seen:
            seen.append(r["method"])
    return seen


LEADERBOARD_LEVELS = ("0.50", "0.60", "0.70", "2:4")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


class Report:
    def __init__(self, rows: list[dict], title: str = "prunelab sweep report", commands: list[str] = (),
                 algorithms: list[dict] = (), carried: list[dict] = ()):
        self.title = title
        # leaderboard cells measured into an earlier store and carried from its rendering (row-shaped, each with
        # "carried": when it was measured); used only where this store has no run of that cell, and marked †
        self.carried = list(carried)
        self.algorithms = {a["name"]: a for a in algorithms}  # check-algorithm verdicts (leaderboard store)
        self.commands = list(dict.fromkeys(commands))  # the sweep invocations that filled the store
        self.rows = [r for r in rows if r["status"] in ("done", "failed")]
        self.pending = [r for r in rows if r["status"] not in ("done", "failed")]
        self.models = sorted({r["model"] for r in self.rows})
        self.methods = _method_order(self.rows)
        self.notes: list[str] = []

    # ---- tables -------------------------------------------------------------------------------------------
    def _note(self, reason: str) -> int:
        if reason not in self.notes:
            self.notes.append(reason)
        return self.notes.index(reason) + 1

    def _by(self, model) -> dict[tuple[str, str], list[dict]]:
        """(level, method) -> every run of it (one per calibration seed), in the order they were claimed."""
        cells: dict = {}
        for r in sorted(self.rows, key=lambda r: r.get("seq", 0)):
            if r["model"] == model:
                cells.setdefault((level_label(r), r["method"]), []).append(r)
        return cells

    def _corpora(self, model) -> list[str]:
        names = []
        for r in self.rows:
            if r["model"] == model and r.get("metrics"):
                for c in r["metrics"].get("perplexity", {}):
                    if c not in names:
                        names.append(c)
        return names

    def perplexity_tables(self) -> list[Table]:
        tables = []
        for model in self.models:
            cells = self._by(model)
            levels = sorted({lv for lv, _ in cells}, key=_level_order)
            for corpus in self._corpora(model):
                body = []
                for lv in levels:
                    line = [Cell(lv)]
                    values = []
                    for method in self.methods:
                        runs = cells.get((lv, method)) or (cells.get((lv, "dense")) if lv.startswith("0.00") else None)
                        cell, value = self._ppl_cell(runs, corpus)
                        line.append(cell)
                        values.append(value)
                    finite = [v for v in values if v is not None and math.isfinite(v)]
                    if len(finite) > 1 and not lv.startswith("0.00"):  # the dense row is not a comparison
                        best = min(finite)
                        for cell, v in zip(line[1:], values):
                            cell.best = v == best
                    body.append(line)
                tables.append(Table(f"Perplexity on {corpus}: {model}", ["Pruned level", *self.methods], body,
                                    caption=self._protocol(model, corpus)))
        return tables

    @staticmethod
    def _ppl(r, corpus):
        if r is None or r["status"] != "done":
            return None
        m = (r.get("metrics") or {}).get("perplexity", {}).get(corpus)
        return None if m is None else _num(m["ppl"])

    def _finite_ppl(self, r, corpus):
        v = self._ppl(r, corpus)
        return v if v is not None and math.isfinite(v) else None

    def _ppl_cell(self, runs, corpus) -> tuple[Cell, float | None]:
        """One cell over every seed of a (level, method): the value, or mean ± sample standard deviation (n) when
        several seeds ran; NA with the reason when none finished. Returns the cell and its (mean) value."""
        if not runs:
            return Cell(""), None
        values = [v for v in (self._ppl(r, corpus) for r in runs) if v is not None]
        failed = [r for r in runs if r["status"] != "done"]
        note = f"{failed[0]['method']} at {level_label(failed[0])}: {failed[0]['reason']}" if failed else None
        if not values:
            return Cell("NA", note=note), None
        mean = sum(values) / len(values)
        if len(runs) == 1:
            return Cell(_fmt(mean)), mean
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        if not math.isfinite(mean):
            spread = float("nan")
        text = f"{_fmt(mean)} ± {_fmt(spread)} (n={len(values)}{', %d failed' % len(failed) if failed else ''})"
        return Cell(text, note=note if failed else None), mean

    def _protocol(self, model, corpus) -> str:
        for r in self.rows:
            if r["model"] == model and r["method"] == "dense":
                ev = r["identity"]["eval"]
                p = ev["protocol"]
                windows = (r.get("metrics") or {}).get("perplexity", {}).get(corpus, {}).get("windows")
                return (f"{corpus} {p['split']}, seqlen {ev['seqlen']}, {windows} windows"
                        + (f" (first {p['windows']})" if p.get("windows") else "") + ".")
        return ""

    def runtime_table(self) -> Table:
        body = []
        for method in self.methods:
            done = [r for r in self.rows if r["method"] == method and r["status"] == "done"]
            if not done:
                continue
            prune = [r["record"]["prune_seconds"] for r in done]
            evals = [r["record"]["eval_seconds"] for r in done]
            rss = [r["record"]["peak_rss_bytes"] / 2**20 for r in done]
            body.append([Cell(method), Cell(str(len(done))), Cell(f"{sum(prune) / len(prune):.1f}"),
                         Cell(f"{min(prune):.1f}"), Cell(f"{max(prune):.1f}"), Cell(f"{sum(evals) / len(evals):.1f}"),
                         Cell(f"{max(rss):.0f}")])
        return Table("Running time per algorithm", ["method", "runs", "mean prune s", "min prune s", "max prune s",
                                                   "mean eval s", "max peak RSS MiB"], body,
                     caption="Wall-clock seconds inside one sweep process; peak RSS is each run's own high-water "
                             "mark (model + snapshot + activations).")

    def size_table(self) -> Table:
        body = []
        seen = set()
        measured = any(self._speed(r) for r in self.rows)
        for r in sorted(self.rows, key=lambda r: _level_order(level_label(r))):
            lv = level_label(r)
            size = (r.get("metrics") or {}).get("size")
            if lv in seen or not size:
                continue
            seen.add(lv)
            line = [Cell(lv), Cell(f"{size['sparsity']:.4f}"), Cell(f"{size['nonzero_params'] / 1e6:.2f}"),
                    Cell(f"{size['dense_checkpoint_bytes'] / 2**20:.1f}"),
                    Cell(f"{size['bitmask_checkpoint_bytes'] / 2**20:.1f}")]
            if measured:
                disk = (self._speed(r) or {}).get("disk_bytes")
                line.append(Cell(f"{disk / 2**20:.1f}" if disk else "-"))
            body.append(line)
        header = ["Pruned level", "sparsity of pruned layers", "non-zero params (M)",
                  "checkpoint MiB (dense, zeros stored)", "checkpoint MiB (bitmask + values)"]
        return Table("Size per level", header + (["weight files on disk MiB (dense, measured)"] if measured else []),
                     body, caption="From the first method's run at each level; a method with per-row targets rounds "
                                   "down row by row and can keep slightly more (each run's own count is in the "
                                   "end-to-end table). The two checkpoint columns are payload bytes computed from the "
                                   "tensors; the measured column (sweeps with --speed) is the saved folder's weight "
                                   "files. `prunelab prune --save-format bitmask|nm` writes the compressed files.")

    # ---- speed (sweeps with --speed) ------------------------------------------------------------------------
    @staticmethod
    def _speed(r) -> dict | None:
        return (r.get("metrics") or {}).get("speed") if r and r["status"] == "done" else None

    def _dense_speed(self, model) -> dict | None:
        return next((self._speed(r) for r in self.rows if r["model"] == model and r["method"] == "dense"
                     and self._speed(r)), None)

    def speed_ratios(self, r) -> dict | None:
        """Measured and ideal speedups of run ``r`` over its model's dense row (None without speed figures)."""
        speed, dense = self._speed(r), self._dense_speed(r["model"])
        if not speed or not dense:
            return None
        return {"prefill": speed["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
                "decode": speed["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
                "ideal_prefill": dense["costs"]["prefill_flops"] / speed["costs"]["prefill_flops"],
                "ideal_decode": dense["costs"]["decode_bytes_per_token"] / speed["costs"]["decode_bytes_per_token"]}

    def speed_table(self) -> Table | None:
        if not any(self._speed(r) for r in self.rows):
            return None
        corpora = {c for m in self.models for c in self._corpora(m)}
        corpus = "wikitext2" if "wikitext2" in corpora else (sorted(corpora)[0] if corpora else None)
        body = []
        for r in sorted(self.rows, key=lambda r: (r["model"], self.methods.index(r["method"])
                                                  if r["method"] in self.methods else -1,
                                                  _level_order(level_label(r)))):
            speed, ratios = self._speed(r), self.speed_ratios(r)
            if not speed:
                continue
            body.append([Cell(r["method"]), Cell(level_label(r)), Cell(_fmt(self._ppl(r, corpus)) if corpus else "-"),
                         Cell(f"{speed['prefill_tokens_per_s']:.1f}"), Cell(f"{speed['decode_tokens_per_s']:.2f}"),
                         Cell(f"{speed['ttft_s']:.3f}"),
                         Cell(f"{ratios['prefill']:.3f}x / {ratios['ideal_prefill']:.3f}x" if ratios else "-"),
                         Cell(f"{ratios['decode']:.3f}x / {ratios['ideal_decode']:.3f}x" if ratios else "-"),
                         Cell(f"{speed['peak_rss_bytes'] / 2**20:.0f}"), Cell(f"{speed['disk_bytes'] / 2**20:.1f}")])
        settings = next(self._speed(r)["settings"] for r in self.rows if self._speed(r))
        return Table("Speed", ["method", "level", f"{corpus} ppl" if corpus else "ppl", "prefill tok/s",
                               "decode tok/s", "time to first token s", "prefill vs dense (measured / ideal)",
                               "decode vs dense (measured / ideal)", "peak RSS MiB", "disk MiB"], body,
                     caption=f"prunelab speed in a child process per model: batch {settings['batch']}, prompt "
                             f"{settings['prompt_len']}, {settings['new_tokens']} new tokens, {settings['threads']} "
                             f"threads, {settings['device']}, {settings['dtype']}, kernel {settings['kernel']}; median "
                             f"of {settings['repeats']} repeats. Ideal: prefill FLOPs and decode bytes per token from "
                             "the non-zero weights (what a kernel skipping every zero could reach).")

    def end_to_end_table(self) -> Table:
        corpora = {c for m in self.models for c in self._corpora(m)}
        corpus = "wikitext2" if "wikitext2" in corpora else (sorted(corpora)[0] if corpora else None)
        tasks = self._task_names()
        header = ["method", "level", f"{corpus} ppl" if corpus else "ppl", *(["mean zero-shot acc"] if tasks else []),
                  "non-zero params (M)", "prune s", "eval s", "peak RSS MiB"]
        body = []
        several_seeds = len({_seed(r) for r in self.rows if r["method"] != "dense"} - {None}) > 1

        def level(r):  # every seed is its own row here
            return level_label(r) + (f" (seed {_seed(r)})" if several_seeds and r["method"] != "dense" else "")

        for r in sorted(self.rows, key=lambda r: (r["model"], self.methods.index(r["method"])
                                                  if r["method"] in self.methods else -1,
                                                  _level_order(level_label(r)), _seed(r) or 0)):
            if r["status"] != "done":
                body.append([Cell(r["method"]), Cell(level(r)),
                             Cell("NA", note=f"{r['method']} at {level_label(r)}: {r['reason']}"),
                             *([Cell("")] * (len(header) - 3))])
                continue
            m, rec = r["metrics"], r["record"]
            line = [Cell(r["method"]), Cell(level(r)), Cell(_fmt(self._ppl(r, corpus)) if corpus else "-")]
            if tasks:
                accs = [t["acc"] for t in (m.get("tasks") or {}).values() if "acc" in t]
                line.append(Cell(f"{100 * sum(accs) / len(accs):.2f}" if accs else "-"))
            line += [Cell(f"{m['size']['nonzero_params'] / 1e6:.2f}"), Cell(f"{rec.get('prune_seconds', 0):.1f}"),
                     Cell(f"{rec.get('eval_seconds', 0):.1f}"), Cell(f"{rec['peak_rss_bytes'] / 2**20:.0f}")]
            body.append(line)
        return Table("End to end", header, body)

    def _task_names(self) -> list[str]:
        names = []
        for r in self.rows:
            for t in ((r.get("metrics") or {}).get("tasks") or {}):
                if t not in names:
                    names.append(t)
        return names

    def zeroshot_table(self) -> Table | None:
        tasks = self._task_names()
        if not tasks:
            return None
        body = []
        for r in self.rows:
            if r["status"] != "done" or not r["metrics"].get("tasks"):
                continue
            res = r["metrics"]["tasks"]
            body.append([Cell(r["method"]), Cell(level_label(r)),
                         *[Cell(f"{100 * res[t]['acc']:.2f}" if t in res else "-") for t in tasks]])
        return Table("Zero-shot accuracy (%)", ["method", "level", *tasks], body)

    def samples_tables(self) -> list[Table]:
        tables = []
        for method in ["dense", *self.methods]:
            body = []
            for r in sorted((r for r in self.rows if r["method"] == method and r["status"] == "done"
                             and r["metrics"].get("samples")), key=lambda r: _level_order(level_label(r))):
                first = r["metrics"]["samples"][0]
                body.append([Cell(level_label(r)), Cell(first["prompt"]), Cell(first["continuation"])])
            if body and method != "dense":
                tables.append(Table(f"Generated text: {method}", ["Pruned level", "prompt", "greedy continuation"],
                                    body))
        return tables

    # seed 003, Tables 3 and 4: completion and QA tasks by pruning rate, with parameter counts
    def _rate_rows(self) -> list[dict]:
        done = [r for r in self.rows if r["status"] == "done" and (r.get("metrics") or {}).get("tasks")]
        return sorted(done, key=lambda r: (r["method"] != "dense", r["method"], _level_order(level_label(r))))

    def _task_table(self, title: str, columns: list[tuple[str, str, str]], caption: str) -> Table | None:
        """columns: (header, task, metric); a column appears only if some run measured that task."""
        rows = self._rate_rows()
        measured = [c for c in columns if any(c[1] in r["metrics"]["tasks"] for r in rows)]
        if not measured:
            return None
        body = []
        for r in rows:
            tasks = r["metrics"]["tasks"]
            cells = []
            for _, task, metric in measured:
                value = (tasks.get(task) or {}).get(metric)
                value = _num(value)
                cells.append(Cell("-" if value is None else f"{value:.2f}" if metric == "perplexity" else f"{100 * value:.2f}"))
            size = r["metrics"].get("size") or {}
            params = f"{size['nonzero_params'] / 1e6:.2f}" if "nonzero_params" in size else "-"
            body.append([Cell(r["method"]), Cell(level_label(r)), Cell(params), *cells])
        return Table(title, ["method", "pruning rate", "non-zero params (M)", *[c[0] for c in measured]], body,
                     caption=caption)

    def seed003_tables(self) -> list[Table]:
        completion = self._task_table(
            "Completion tasks by pruning rate", [("LAMBADA acc", "lambada", "acc"),
                                                 ("LAMBADA ppl", "lambada", "perplexity"),
                                                 ("HellaSwag acc", "hellaswag", "acc"),
                                                 ("HellaSwag acc_norm", "hellaswag", "acc_norm")],
            "Seed 003, Table 3 layout (StoryCloze is not available locally). Accuracies in %; methods with +ft, "
            "+lora or +iter were fine-tuned after (or between) pruning steps, with the mask kept.")
        qa = self._task_table(
            "QA tasks by pruning rate", [("BoolQ", "boolq", "acc"), ("ARC-Easy", "arc_easy", "acc"),
                                         ("ARC-Challenge", "arc_challenge", "acc"), ("OpenBookQA", "openbookqa", "acc"),
                                         ("SIQA", "siqa", "acc")],
            "Seed 003, Table 4 layout. The seed's open-domain QA sets (Natural Questions, WebQuestions, TriviaQA) "
            "are not available locally; the multiple-choice QA tasks measured here stand in for them (acc, %).")
        return [t for t in (completion, qa) if t]

    def recovery_table(self) -> Table | None:
        rows = [r for r in self.rows if r["status"] == "done" and (r.get("record") or {}).get("recovery")]
        if not rows:
            return None
        body = []
        for r in sorted(rows, key=lambda r: (r["method"], _level_order(level_label(r)))):
            rec = r["record"]["recovery"]
            steps = rec["steps"]
            first = next((h for h in steps[0]["heldout"] if h["when"] == "start"), None)
            last = steps[-1]["heldout"][-1]
            body.append([Cell(r["method"]), Cell(level_label(r)), Cell(rec["describe"]),
                         Cell(" → ".join(f"{s['sparsity']:.3f}" for s in steps)),
                         Cell(f"{rec['tokens']:,}"), Cell(f"{rec['train_cpu_seconds'] / 60:.1f}"),
                         Cell(f"{first['ppl']:.2f} → {last['ppl']:.2f}" if first else f"{last['ppl']:.2f}")])
        return Table("Recovery fine-tuning and iterative runs",
                     ["method", "level", "how", "sparsity after each step", "training tokens", "train CPU min",
                      "held-out ppl (start → end)"], body,
                     caption="Held-out perplexity on the fine-tuning corpus's held-out documents (never trained on); "
                             "iterative runs start after their first pruning step. Sparsity after fine-tuning equals "
                             "the sparsity shown, to the weight.")

    # ---- leaderboard (seed 002, Tables 4, 7, 8) ----------------------------------------------------------------
    def _author(self, method: str) -> str:
        base = method.split("+")[0]
        if base in self.algorithms:
            return self.algorithms[base]["author"]
        if any(((r.get("record") or {}).get("config") or {}).get("structure") for r in [*self.rows, *self.carried]
               if r["method"] == method):
            return "human"  # a built-in structured criterion (--structure)
        try:
            from ..algorithms import get_algorithm
            from ..algorithms.base import algorithm_source
            return "human" if algorithm_source(get_algorithm(base)) is None else "?"
        except ValueError:
            return "?"

    def _mean_acc(self, r) -> float | None:
        accs = [t["acc"] for t in ((r.get("metrics") or {}).get("tasks") or {}).values() if "acc" in t]
        if not accs:
            return r.get("mean_acc")  # a carried cell keeps only the mean
        return 100 * sum(accs) / len(accs) if r["status"] == "done" else None

    def leaderboard_tables(self) -> list[Table]:
        """Every algorithm ranked by WikiText-2 perplexity at 50/60/70% and 2:4, with prune time, peak memory,
        zero-shot mean accuracy, author (human | generated); then the best per author, and gate failures."""
        tables = []
        for model in sorted({*self.models, *(r["model"] for r in self.carried)}):
            cells = self._by(model)
            for r in self.carried:
                if r["model"] == model and (level_label(r), r["method"]) not in cells:
                    cells[(level_label(r), r["method"])] = [r]
            carried_dates = sorted({r["carried"] for rs in cells.values() for r in rs if r.get("carried")})
            levels = [lv for lv in LEADERBOARD_LEVELS if any(k[0] == lv for k in cells)]
            if not levels:
                continue
            corpora = list(dict.fromkeys(c for rs in cells.values() for r in rs
                                         for c in ((r.get("metrics") or {}).get("perplexity") or {})))
            corpus = "wikitext2" if "wikitext2" in corpora else (corpora or [None])[0]
            methods = [m for m in dict.fromkeys([*self.methods, *(r["method"] for r in self.carried)])
                       if any((lv, m) in cells for lv in levels)]

            def mean_of(values):
                values = [v for v in values if v is not None]
                return sum(values) / len(values) if values else None

            # over calibration seeds when several ran: the mean
            ppl = {(lv, m): mean_of([self._finite_ppl(r, corpus) for r in cells.get((lv, m), [])])
                   for lv in levels for m in methods}
            rank = {}
            for lv in levels:
                order = sorted((v, m) for (level, m), v in ppl.items() if level == lv and v is not None)
                rank.update({(lv, m): i + 1 for i, (_, m) in enumerate(order)})

            def sort_key(m):
                measured = [ppl[(lv, m)] for lv in levels if ppl[(lv, m)] is not None]
                return (-len(measured), _geomean(measured) if measured else math.inf)

            tasks = bool(self._task_names())
            header = ["#", "algorithm", "author", *[f"ppl {lv}" for lv in levels],
                      *([f"acc {lv}" for lv in levels] if tasks else []), "mean prune s", "peak RSS MiB"]
            body = []
            for i, m in enumerate(sorted(methods, key=sort_key), 1):
                done = [r for lv in levels for r in cells.get((lv, m), []) if r["status"] == "done"]
                line = [Cell(str(i)), Cell(m), Cell(self._author(m))]
                for lv in levels:
                    runs = cells.get((lv, m), [])
                    if not runs:
                        line.append(Cell("-"))
                    elif ppl[(lv, m)] is None:
                        reason = next((r.get("reason") for r in runs if r.get("reason")), "perplexity not finite")
                        line.append(Cell("NA", note=f"{m} at {lv}: {reason}"))
                    else:
                        mark = " †" if any(r.get("carried") for r in runs) else ""
                        line.append(Cell(f"{_fmt(ppl[(lv, m)])} ({rank[(lv, m)]}){mark}", best=rank[(lv, m)] == 1))
                if tasks:
                    for lv in levels:
                        acc = mean_of([self._mean_acc(r) for r in cells.get((lv, m), [])])
                        line.append(Cell("-" if acc is None else f"{acc:.2f}"))
                prune = [r["record"]["prune_seconds"] for r in done if r["record"].get("prune_seconds") is not None]
                rss = [r["record"]["peak_rss_bytes"] / 2**20 for r in done
                       if r["record"].get("peak_rss_bytes") is not None]
                line += [Cell(f"{sum(prune) / len(prune):.1f}" if prune else "-"),
                         Cell(f"{max(rss):.0f}" if rss else "-")]
                body.append(line)
            limit = next((r["identity"]["eval"]["protocol"].get("task_limit") for r in self.rows
                          if r["model"] == model and r.get("identity", {}).get("eval")), None)
            tables.append(Table(
                f"Leaderboard: {model}", header, body,
                caption=f"Ranked by the geometric mean of {corpus} perplexity over the settings an algorithm has "
                        f"(those with more measured settings first); (n) = rank at that level, bold = best. "
                        f"{self._protocol(model, corpus) if corpus else ''} Prune seconds: mean over these runs; "
                        f"peak RSS: the highest of their own high-water marks (seed 002, Table 7)."
                        + (f" acc: mean zero-shot accuracy over {', '.join(self._task_names())} (seed 002, Table 8)"
                           + (f", first {limit} items of each task" if limit else "") + "." if tasks else "")
                        + " author: human = designed by people (published or defined here), generated = written by a "
                        "code-generating model; plug-ins as tagged by check-algorithm --author."
                        + (f" † measured with the same protocol into an earlier results store (rendered "
                           f"{', '.join(carried_dates)}) and carried from that rendering; not in this store, and "
                           f"its prune time, memory and accuracy count where that rendering kept them." if carried_dates
                           else "")))
            best = []
            for lv in levels:
                line = [Cell(lv)]
                for author in ("human", "generated"):
                    scored = [(ppl[(lv, m)], m) for m in methods if self._author(m) == author and ppl[(lv, m)] is not None]
                    line.append(Cell(f"{min(scored)[1]}: {_fmt(min(scored)[0])}" if scored else "-"))
                best.append(line)
            tables.append(Table(f"Human vs generated: {model}", ["level", "best human", "best generated"], best))
        failed = [a for a in self.algorithms.values() if a["gate"] == "failed"]
        if failed:
            tables.append(Table("Gate failures (check-algorithm)", ["algorithm", "author", "failed check: reason",
                                                                    "checked"],
                                [[Cell(a["name"]), Cell(a["author"]), Cell(a["reason"] or ""), Cell(a["checked"] or "")]
                                 for a in failed],
                                caption="Plug-ins that did not pass the gate; they are not benchmarked."))
        return tables

    def tables(self) -> list[Table]:
        tables = [*self.perplexity_tables(), *self.leaderboard_tables(), self.runtime_table(), self.end_to_end_table(),
                  self.size_table()]
        speed = self.speed_table()
        z = self.zeroshot_table()
        recovery = self.recovery_table()
        return (tables + ([speed] if speed else []) + ([z] if z else []) + self.seed003_tables() + ([recovery] if recovery else [])
                + self.samples_tables())

    # ---- plots --------------------------------------------------------------------------------------------
    def plots(self) -> dict[str, str]:
        """name -> SVG text."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "prunelab", "figure.dpi": 100})
        out = {}
        for model in self.models:
            for corpus in self._corpora(model):
                fig, ax = plt.subplots(figsize=(7, 4.2))
                for method in self.methods:
                    by_level: dict = {}
                    for r in self.rows:
                        if (r["model"] == model and r["method"] == method and r["pattern"] == "unstructured"
                                and self._finite_ppl(r, corpus) is not None):
                            by_level.setdefault(r["level"], []).append(self._finite_ppl(r, corpus))
                    pts = sorted((lv, sum(v) / len(v)) for lv, v in by_level.items())  # mean over seeds
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
                dense = [self._ppl(r, corpus) for r in self.rows if r["model"] == model and r["method"] == "dense"]
                if dense and dense[0] is not None:
                    ax.axhline(dense[0], color="gray", linestyle="--", linewidth=1, label="dense")
                _log_ppl_axes(ax, "pruned level (fraction of weights zeroed)", corpus,
                              f"Perplexity vs pruning level: {model}")
                out[f"ppl_vs_level_{model}_{corpus}"] = _svg(fig)
                plt.close(fig)

                fig, ax = plt.subplots(figsize=(7, 4.2))
                for method in self.methods:
                    pts = sorted((r["metrics"]["size"]["bitmask_checkpoint_bytes"] / 2**20, self._finite_ppl(r, corpus))
                                 for r in self.rows if r["model"] == model and r["method"] == method
                                 and self._finite_ppl(r, corpus) is not None)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="", label=method)
                _log_ppl_axes(ax, "checkpoint MiB (bitmask + non-zero values)", corpus, f"Quality vs size: {model}")
                out[f"quality_vs_size_{model}_{corpus}"] = _svg(fig)
                plt.close(fig)

                speed_rows = [r for r in self.rows if r["model"] == model and self.speed_ratios(r)
                              and self._finite_ppl(r, corpus) is not None]
                if speed_rows:
                    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
                    for ax, phase in zip(axes, ("prefill", "decode")):
                        for method in ["dense", *self.methods]:
                            pts = [(self.speed_ratios(r)[phase], self._finite_ppl(r, corpus)) for r in speed_rows
                                   if r["method"] == method]
                            if pts:
                                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="*" if method == "dense"
                                        else "o", markersize=12 if method == "dense" else 6, linestyle="",
                                        label=method, color="black" if method == "dense" else None)
                        _log_ppl_axes(ax, f"{phase} tokens/s relative to dense (measured)", corpus,
                                      f"Quality vs {phase} speed: {model}")
                    out[f"quality_vs_speed_{model}_{corpus}"] = _svg(fig)
                    plt.close(fig)
        runtime = self.runtime_table()
        if runtime.rows:
            fig, ax = plt.subplots(figsize=(7, 3.6))
            names = [row[0].text for row in runtime.rows]
            ax.bar(names, [float(row[2].text) for row in runtime.rows], color="#4c72b0")
            ax.set_ylabel("mean prune seconds")
            ax.set_title("Running time per algorithm")
            out["runtime"] = _svg(fig)
            plt.close(fig)
        return out

    # ---- rendering ----------------------------------------------------------------------------------------
    def markdown(self, plot_files: dict[str, str]) -> str:
        self.notes = []
        lines = [f"# {self.title}", "", self._summary_line(), ""]
        if self.commands:
            lines += ["Made by:", "", *[f"    {c}" for c in self.commands], ""]
        for table in self.tables():
            lines += [f"## {table.title}", ""]
            if table.caption:
                lines += [table.caption, ""]
            lines.append("| " + " | ".join(table.header) + " |")
            lines.append("|" + "---|" * len(table.header))
            for row in table.rows:
                lines.append("| " + " | ".join(self._md_cell(c) for c in row) + " |")
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"{i}. {html.escape(n)}" for i, n in enumerate(self.notes, 1)] + [""]
        for name, file in plot_files.items():
            lines += [f"![{name}]({file})", ""]
        return "\n".join(lines)

    def _md_cell(self, c: Cell) -> str:
        text = c.text.replace("|", "\\|").replace("\n", " ")
        if c.note:
            text += f" [{self._note(c.note)}]"
        return f"**{text}**" if c.best else text

    def html(self, plots: dict[str, str]) -> str:
        self.notes = []
        parts = [f"<h1>{html.escape(self.title)}</h1>", f"<p>{html.escape(self._summary_line())}</p>"]
        if self.commands:
            parts.append("<p>Made by:</p><pre>" + html.escape("\n".join(self.commands)) + "</pre>")
        for table in self.tables():
            parts.append(f"<h2>{html.escape(table.title)}</h2>")
            if table.caption:
                parts.append(f"<p class='caption'>{html.escape(table.caption)}</p>")
            head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
            body = "".join("<tr>" + "".join(self._html_cell(c) for c in row) + "</tr>" for row in table.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if self.notes:
            parts.append("<h2>Notes</h2><ol class='notes'>" + "".join(
                f"<li id='note{i}'>{html.escape(n)}</li>" for i, n in enumerate(self.notes, 1)) + "</ol>")
        if plots:
            parts.append("<h2>Plots</h2>")
            parts += [f"<figure id='{html.escape(name)}'>{svg}</figure>" for name, svg in plots.items()]
        return _PAGE.format(title=html.escape(self.title), body="\n".join(parts))

    def _html_cell(self, c: Cell) -> str:
        text = html.escape(c.text)
        if c.note:
            i = self._note(c.note)
            return f"<td class='na' title='{html.escape(c.note, quote=True)}'>{text}<sup><a href='#note{i}'>{i}</a></sup></td>"
        return f"<td class='best'>{text}</td>" if c.best else f"<td>{text}</td>"

    def _summary_line(self) -> str:
        done = sum(r["status"] == "done" for r in self.rows)
        failed = len(self.rows) - done
        line = f"Models: {', '.join(self.models)}. Runs: {done} done, {failed} failed"
        if self.pending:
            line += f", {len(self.pending)} not finished (running or interrupted; not shown)"
        versions = next((r["record"].get("versions") for r in self.rows if r.get("record")), None) or {}
        host = next((r["record"].get("host") for r in self.rows if r.get("record")), None) or {}
        line += (f". prunelab {versions.get('prunelab')}, torch {versions.get('torch')}, transformers "
                 f"{versions.get('transformers')}; {host.get('cpu_count')} CPUs, CUDA {host.get('cuda')}."
                 " Bold: lowest perplexity of the row.")
        return line


def _log_ppl_axes(ax, xlabel: str, corpus: str, title: str) -> None:
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{corpus} perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _slug(text: str) -> str:
    """A file-name-safe stem for plot files (model and corpus names can be paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[-80:] or "plot"


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype so it can sit inline in HTML


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }}
td:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; }}
td.na {{ color: #a00; }}
p.caption {{ color: #555; font-size: 0.9em; }}
figure svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_report(store_path: str | Path, out: str | Path, *, methods: list[str] | None = None,
                 models: list[str] | None = None, title: str | None = None,
                 carried: list[dict] = ()) -> dict[str, Path]:
    store = ResultsStore(store_path)
    try:
        rows = store.rows()
        commands = [" ".join(shlex.quote(a) for a in s["argv"]) for s in store.sweeps() if s.get("argv")]
        algorithms = store.algorithms()
    finally:
        store.close()
    if models:
        rows = [r for r in rows if r["model"] in models]
    if methods:
        rows = [r for r in rows if r["method"] in methods or r["method"] == "dense"]
    if not rows and not algorithms:
        raise ValueError(f"{store_path} holds no runs" + (" matching the filter" if methods or models else ""))
    report = Report(rows, title or f"prunelab sweep report ({Path(store_path).name})", commands, algorithms, carried)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = report.plots()
    files = {}
    for name, svg in plots.items():
        files[name] = f"{_slug(name)}.svg"
        (out / files[name]).write_text(svg)
    (out / "report.md").write_text(report.markdown(files))
    (out / "report.html").write_text(report.html(plots))
    return {"markdown": out / "report.md", "html": out / "report.html"}
