"""Zero-shot tasks: where each one's data lives and how lm-evaluation-harness builds its prompts.

One small definition per task. Each turns a record of the genuine local file (or of the Hugging Face dataset the
harness reads) into an :class:`Item`: the context string(s), the continuation string per choice and the gold index,
built the way lm-evaluation-harness 0.4.13 builds them for its task of the same name with zero few-shot examples:

* multiple choice: context = the task's ``doc_to_text``; continuation of choice *i* = ``" " + choice_i`` (the
  default target delimiter); WinoGrande instead varies the context (sentence up to the blank + option) and scores
  the same continuation (``" " + the rest of the sentence``), "partial scoring";
* ``lambada`` is the harness's ``lambada_openai``: context = every word but the last (split on ``" "``),
  continuation = ``" " + last word``.

Tokenization and scoring are in :mod:`prunelab.eval.zeroshot`; this module is strings only.

HellaSwag: only llama.cpp's 6-line text extraction of the validation split is available locally, which stores
``activity_label + ": " + ctx`` with the HF ``ctx`` field (``ctx_a + " " + ctx_b``, ``ctx_b`` lower-case) already
cleaned of ``[header]``/``[step]``/``[title]`` markers. The harness builds ``activity_label + ": " + ctx_a + " " +
ctx_b.capitalize()`` and then cleans it. We restore the capital: ``ctx_b`` is taken to be the text after the last
``[.!?]`` + space when the context does not itself end a sentence (true of all 3243 ActivityNet items; the 6799
WikiHow items have an empty ``ctx_b`` and end with punctuation), then apply the harness's cleaning again to the query
and endings (it also drops bracketed text such as ``[www.example.org]`` that llama.cpp kept). See ``HELLASWAG_GAP``.
"""
from __future__ import annotations

import bz2
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data.corpora import data_dir as default_data_dir

HARNESS = "lm-evaluation-harness 0.4.13"
HELLASWAG_GAP = (
    "local data is llama.cpp's 6-line extraction, not the original JSONL: ctx_b's capital letter is restored by a "
    "rule (text after the last sentence end when the context does not end a sentence), then the harness's "
    "preprocess is applied again; about 5 items with numbered contexts ('... 5 the guy') may still differ, and "
    "whitespace runs of 3+ spaces collapsed by llama.cpp cannot be restored")


@dataclass
class Item:
    """One evaluation item as the harness sees it (zero-shot)."""
    index: int                      # position in the file (the order --limit takes items in)
    contexts: list[str]             # one shared context, or one per choice (WinoGrande)
    continuations: list[str]        # one per choice; a single target for loglikelihood tasks
    gold: int | None                # index of the correct choice (None for LAMBADA: the target is the answer)
    choices: list[str] = field(default_factory=list)  # the harness's doc_to_choice (acc_norm divides by len())
    id: str | None = None

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) requests in choice order."""
        if len(self.contexts) == 1:
            return [(self.contexts[0], c) for c in self.continuations]
        if len(self.continuations) == 1:
            return [(ctx, self.continuations[0]) for ctx in self.contexts]
        return list(zip(self.contexts, self.continuations, strict=True))


@dataclass(frozen=True)
class Task:
    name: str
    harness_task: str               # lm-eval task name
    dataset: str
    split: str
    files: tuple[str, ...]          # inside the data directory
    output_type: str                # "multiple_choice" | "loglikelihood"
    metrics: tuple[str, ...]
    expected_items: int
    prompt: str                     # human-readable template, recorded with results
    read_local: Callable[[list[Path]], list[dict]]
    to_item: Callable[[int, dict], Item]
    hf: tuple[str, str | None, str] | None = None  # (dataset id, config, split) read by the harness
    hf_map: Callable[[dict], dict] | None = None   # HF row -> the local record layout
    version: int = 1                # bump when a task's prompt construction changes
    note: str | None = None

    @property
    def prompt_format(self) -> str:
        return f"prunelab-zeroshot/{self.name}/v{self.version} (= {HARNESS} `{self.harness_task}`, 0-shot)"


# ---------------------------------------------------------------- readers

def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _labels(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _with_labels(paths: list[Path]) -> list[dict]:
    records, labels = _jsonl(paths[0]), _labels(paths[1])
    if len(records) != len(labels):
        raise ValueError(f"{paths[0].name} has {len(records)} records but {paths[1].name} has {len(labels)} labels")
    return [{**r, "label": lab} for r, lab in zip(records, labels)]


def _winogrande_local(paths: list[Path]) -> list[dict]:
    records = _with_labels(paths)
    for number, r in enumerate(records, 1):
        if r["answer"] != r["label"]:
            raise ValueError(f"winogrande record {number}: answer {r['answer']!r} but the labels file says {r['label']!r}")
    return records


def _hellaswag_local(paths: list[Path]) -> list[dict]:
    with bz2.open(paths[0], "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{paths[0].name}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    records = []
    for k in range(0, len(lines), 6):
        query, label, *endings = lines[k:k + 6]
        activity_label, sep, ctx = query.partition(": ")
        if not sep:
            raise ValueError(f"{paths[0].name} line {k + 1}: no 'activity_label: ' prefix")
        ctx_a, ctx_b = split_hellaswag_ctx(ctx)
        records.append({"activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": endings,
                        "label": label})
    return records


_SENTENCE_END = re.compile(r"[.!?]\s+")


def split_hellaswag_ctx(ctx: str) -> tuple[str, str]:
    """Recover (ctx_a, ctx_b) from HF ``ctx`` = ctx_a + " " + ctx_b: ctx_b is the unfinished last sentence (empty when
    the context ends with . ! or ?)."""
    if not ctx or ctx.rstrip()[-1] in ".!?":
        return ctx, ""
    last = None
    for last in _SENTENCE_END.finditer(ctx):
        pass
    if last is None:
        return "", ctx
    return ctx[:last.end()].rstrip(" "), ctx[last.end():]


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag cleaning (WikiHow artefacts): strip, ' [title]' -> '. ', drop '[...]', '  ' -> ' '."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


# ---------------------------------------------------------------- item builders

def _mc(index: int, context: str, choices: list[str], gold: int, id_=None) -> Item:
    if not 0 <= gold < len(choices):
        raise ValueError(f"item {index}: gold index {gold} outside {len(choices)} choices")
    return Item(index, [context], [" " + c for c in choices], gold, list(choices), id_)


def _lambada(i, d):
    words = d["text"].split(" ")
    return Item(i, [" ".join(words[:-1])], [" " + words[-1]], None, [], None)


def _piqa(i, d):
    return _mc(i, f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]), d.get("id"))


def _arc(i, d):
    q = d["question"]
    labels = [c["label"] for c in q["choices"]]
    return _mc(i, f"Question: {q['stem']}\nAnswer:", [c["text"] for c in q["choices"]], labels.index(d["answerKey"]),
               d.get("id"))


def _openbookqa(i, d):
    q = d["question"]
    labels = [c["label"] for c in q["choices"]]
    return _mc(i, q["stem"], [c["text"] for c in q["choices"]], labels.index(d["answerKey"].lstrip()), d.get("id"))


def _hellaswag(i, d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = hellaswag_preprocess(d["activity_label"] + ": " + ctx)
    return _mc(i, query, [hellaswag_preprocess(e) for e in d["endings"]], int(d["label"]), d.get("ind"))


def _boolq(i, d):
    label = d["label"]
    if isinstance(label, str):
        label = {"true": 1, "false": 0, "1": 1, "0": 0}[label.lower()]
    return _mc(i, f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(label), d.get("idx"))


def _winogrande(i, d):
    sentence = d["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + option for option in (d["option1"], d["option2"])]
    gold = {"1": 0, "2": 1}[str(d["answer"])]
    return Item(i, contexts, [" " + sentence[blank + 1:].strip()], gold, contexts, d.get("qID"))


def _siqa(i, d):
    return _mc(i, f"Q: {d['context']} {d['question']}\nA:", [d["answerA"], d["answerB"], d["answerC"]],
               int(d["label"]) - 1)


def _hf_arc(row):
    return {"id": row["id"], "question": {"stem": row["question"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(row["choices"]["text"], row["choices"]["label"])]},
        "answerKey": row["answerKey"]}


def _hf_obqa(row):
    return {"id": row["id"], "question": {"stem": row["question_stem"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(row["choices"]["text"], row["choices"]["label"])]},
        "answerKey": row["answerKey"]}


MC_METRICS = ("acc", "acc_norm")
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("lambada", "lambada_openai", "LAMBADA (OpenAI detokenized)", "test", ("lambada_openai/lambada_test.jsonl",),
         "loglikelihood", ("acc", "perplexity"), 5153,
         "context = text.split(' ')[:-1] joined by ' '; target = ' ' + last word",
         lambda p: _jsonl(p[0]), _lambada, ("EleutherAI/lambada_openai", "default", "test")),
    Task("piqa", "piqa", "PIQA", "validation", ("piqa/valid.jsonl", "piqa/valid-labels.lst"), "multiple_choice",
         MC_METRICS, 1838, "'Question: {goal}\\nAnswer:' + ' ' + {sol1|sol2}", _with_labels, _piqa,
         ("baber/piqa", None, "validation")),
    Task("arc_easy", "arc_easy", "ARC-Easy", "test", ("arc/ARC-Easy-Test.jsonl",), "multiple_choice", MC_METRICS, 2376,
         "'Question: {question}\\nAnswer:' + ' ' + {choice}", lambda p: _jsonl(p[0]), _arc,
         ("allenai/ai2_arc", "ARC-Easy", "test"), _hf_arc),
    Task("arc_challenge", "arc_challenge", "ARC-Challenge", "test", ("arc/ARC-Challenge-Test.jsonl",),
         "multiple_choice", MC_METRICS, 1172, "'Question: {question}\\nAnswer:' + ' ' + {choice}",
         lambda p: _jsonl(p[0]), _arc, ("allenai/ai2_arc", "ARC-Challenge", "test"), _hf_arc),
    Task("hellaswag", "hellaswag", "HellaSwag", "validation", ("hellaswag/hellaswag_val_full.txt.bz2",),
         "multiple_choice", MC_METRICS, 10042,
         "preprocess(activity_label + ': ' + ctx_a + ' ' + ctx_b.capitalize()) + ' ' + preprocess(ending)",
         _hellaswag_local, _hellaswag, ("Rowan/hellaswag", None, "validation"), note=HELLASWAG_GAP),
    Task("boolq", "boolq", "BoolQ (SuperGLUE)", "validation", ("boolq/val.jsonl",), "multiple_choice", ("acc",), 3270,
         "'{passage}\\nQuestion: {question}?\\nAnswer:' + ' ' + {no|yes}", lambda p: _jsonl(p[0]), _boolq,
         ("aps/super_glue", "boolq", "validation")),
    Task("winogrande", "winogrande", "WinoGrande 1.1 (xl dev)", "validation",
         ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"), "multiple_choice", ("acc",), 1267,
         "partial scoring: context = sentence[:blank] + option; continuation = ' ' + sentence[blank+1:].strip()",
         _winogrande_local, _winogrande, ("allenai/winogrande", "winogrande_xl", "validation")),
    Task("openbookqa", "openbookqa", "OpenBookQA (main)", "test", ("openbookqa/test.jsonl",), "multiple_choice",
         MC_METRICS, 500, "'{question_stem}' + ' ' + {choice}", lambda p: _jsonl(p[0]), _openbookqa,
         ("allenai/openbookqa", "main", "test"), _hf_obqa),
    Task("siqa", "social_iqa", "Social IQa", "validation", ("siqa/dev.jsonl", "siqa/dev-labels.lst"),
         "multiple_choice", ("acc",), 1954, "'Q: {context} {question}\\nA:' + ' ' + {answerA|answerB|answerC}",
         _with_labels, _siqa, ("lighteval/siqa", None, "validation")),
]}
ALIASES = {"lambada_openai": "lambada", "social_iqa": "siqa", "arc_e": "arc_easy", "arc_c": "arc_challenge",
           "obqa": "openbookqa"}
ALL_TASKS = tuple(TASKS)

METRIC_DEFINITIONS = {
    "acc": "multiple choice: fraction of items whose choice with the highest summed continuation log-likelihood "
           "is gold (first index on ties); lambada: fraction whose target tokens are all the greedy argmax",
    "acc_norm": "fraction of items whose argmax of log-likelihood / len(choice string) (characters, without the "
                "leading delimiter space) is gold (the harness's acc_norm)",
    "perplexity": "exp(-mean over items of the target word's summed log-likelihood) (the harness's lambada "
                  "perplexity: per item, not per token)",
    "stderr": "acc: sample standard deviation / sqrt(n) (the harness's mean_stderr); perplexity: delta method "
              "ppl * stderr(mean log-likelihood) (the harness bootstraps it instead)",
}


def resolve_task_names(names) -> list[str]:
    """'all', a comma string or a list -> task names in a stable order; unknown names raise ValueError."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            out.extend(n for n in ALL_TASKS if n not in out)
            continue
        name = ALIASES.get(name, name)
        if name not in TASKS:
            raise ValueError(f"unknown task {raw!r}: choose from {', '.join(ALL_TASKS)} or 'all'")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no task given: choose from {', '.join(ALL_TASKS)} or 'all'")
    return out


def local_task_files(name: str, data_dir: str | Path | None = None) -> list[Path] | None:
    """The task's local files if all are present in the data directory, else None."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    paths = [root / rel for rel in TASKS[name].files]
    return paths if all(p.is_file() for p in paths) else None


@dataclass
class TaskData:
    task: Task
    items: list[Item]
    total_items: int
    source: str
    files: dict[str, str]           # relative path -> sha256 (local), or {"hf": dataset id}
    sha256: str                     # one digest for all the files read
    provenance: dict = field(default_factory=dict)  # local path, or Hub dataset id/config/split/revision
    limit: int | None = None


def _combined_digest(files: dict[str, str]) -> str:
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()


def load_task(name: str, limit: int | None = None, data_dir: str | Path | None = None,
              source: str = "auto") -> TaskData:
    """Items of a task, in file order, the first ``limit`` of them when given (the harness's --limit rule).

    ``source="auto"`` (default) reads the local files in the data directory (``$PRUNELAB_DATA``, ./shared/data or
    ../shared/data) when they are all there, else the Hugging Face dataset the harness uses (downloaded once into
    the HF cache); ``"local"`` or ``"hf"`` force one of the two.
    """
    task = TASKS[resolve_task_names([name])[0]]
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items, got {limit}")
    if source not in ("auto", "local", "hf"):
        raise ValueError(f"source must be 'auto', 'local' or 'hf', not {source!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    paths = local_task_files(task.name, root) if source != "hf" else None
    if paths is None and source == "local":
        raise FileNotFoundError(
            f"task {task.name}: data file(s) not found: {', '.join(str(root / r) for r in task.files)}. Point "
            f"PRUNELAB_DATA (or data_dir) at a folder holding {', '.join(task.files)}, or read it from the Hub "
            "(source 'auto' or 'hf')")
    if paths is None:
        records, files, where, provenance = _load_hf(task)
    else:
        files = {rel: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in zip(task.files, paths)}
        records = task.read_local(paths)
        where = str(root)
        provenance = {"kind": "local", "path": where, "files": files}
    total = len(records)
    chosen = records if limit is None else records[:limit]
    items = [task.to_item(i, r) for i, r in enumerate(chosen)]
    return TaskData(task, items, total, where, files, _combined_digest(files), provenance, limit)


def _load_hf(task: Task):
    from ..data.hub import load_dataset_rows

    if task.hf is None:
        raise ValueError(f"task {task.name} has no Hugging Face source")
    dataset_id, config, split = task.hf
    rows, provenance = load_dataset_rows(dataset_id, config, split, f"task {task.name}", ", ".join(task.files))
    if task.hf_map is not None:
        rows = [task.hf_map(r) for r in rows]
    if task.name == "winogrande":
        for r in rows:
            r["label"] = r["answer"]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return rows, {f"hf:{dataset_id}/{config or ''}/{split}": digest}, f"hf:{dataset_id}", provenance
