"""Local-file loaders for lm-evaluation-harness, so the harness scores the same files prunelab reads.

Used by the task YAMLs in this folder (``custom_dataset: !function utils.load_<task>``). The data directory is
``$PRUNELAB_DATA``, else ``shared/data`` next to the repository (as prunelab finds it). Everything that decides a
prompt (doc_to_text, doc_to_choice, target, HellaSwag's process_docs, WinoGrande's functions) is the harness's own:
the YAMLs repeat its templates (``compare.py`` checks them against the installed harness) or call its functions.
"""
import bz2
import json
import os
import re
from pathlib import Path

import datasets


def data_dir() -> Path:
    env = os.environ.get("PRUNELAB_DATA")
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data",
                      Path(__file__).resolve().parents[3].parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("set PRUNELAB_DATA to the folder holding the evaluation data (shared/data)")


def _jsonl(rel):
    with open(data_dir() / rel, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _labels(rel):
    with open(data_dir() / rel, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _split(name, rows):
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows)})


# ---- HF layouts the harness's YAMLs expect, built from the original files

def load_lambada(**kwargs):
    return _split("test", [{"text": r["text"]} for r in _jsonl("lambada_openai/lambada_test.jsonl")])


def load_piqa(**kwargs):
    rows = _jsonl("piqa/valid.jsonl")
    labels = _labels("piqa/valid-labels.lst")
    assert len(rows) == len(labels)
    return _split("validation", [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)}
                                 for r, lab in zip(rows, labels)])


def _multiple_choice(rel, split, stem_key):
    """ARC / OpenBookQA rows in the HF layout: question stem, choices {text, label}, answerKey."""
    out = []
    for r in _jsonl(rel):
        q = r["question"]
        out.append({"id": r["id"], stem_key: q["stem"],
                    "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
                    "answerKey": r["answerKey"]})
    return _split(split, out)


def _arc(rel):
    return _multiple_choice(rel, "test", "question")


def load_arc_easy(**kwargs):
    return _arc("arc/ARC-Easy-Test.jsonl")


def load_arc_challenge(**kwargs):
    return _arc("arc/ARC-Challenge-Test.jsonl")


def load_boolq(**kwargs):
    # SuperGLUE's val.jsonl stores the label as the string "true"/"false"; HF super_glue has 1/0
    labels = {"true": 1, "false": 0, True: 1, False: 0}
    return _split("validation", [{"question": r["question"], "passage": r["passage"], "idx": r["idx"],
                                  "label": labels[r["label"]]} for r in _jsonl("boolq/val.jsonl")])


def load_winogrande(**kwargs):
    rows = _jsonl("winogrande/dev.jsonl")
    return _split("validation", [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in rows])


def load_openbookqa(**kwargs):
    return _multiple_choice("openbookqa/test.jsonl", "test", "question_stem")


def load_siqa(**kwargs):
    rows = _jsonl("siqa/dev.jsonl")
    labels = _labels("siqa/dev-labels.lst")
    assert len(rows) == len(labels)
    return _split("validation", [{**r, "label": lab} for r, lab in zip(rows, labels)])


def load_hellaswag(**kwargs):
    """llama.cpp's 6-line file -> HF fields. The file keeps ``activity_label: ctx`` with ctx = ctx_a + " " + ctx_b;
    ctx_b (lower-case, capitalised by the harness) is the unfinished last sentence: the text after the last
    [.!?] + whitespace when the context does not end with . ! or ? (the same rule prunelab uses)."""
    with bz2.open(data_dir() / "hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    out = []
    for k in range(0, len(lines), 6):
        query, label, *endings = lines[k:k + 6]
        activity_label, _, ctx = query.partition(": ")
        ctx_a, ctx_b = ctx, ""
        if ctx and ctx.rstrip()[-1] not in ".!?":
            ends = list(re.finditer(r"[.!?]\s+", ctx))
            if ends:
                ctx_a, ctx_b = ctx[:ends[-1].end()].rstrip(" "), ctx[ends[-1].end():]
            else:
                ctx_a, ctx_b = "", ctx
        out.append({"ind": k // 6, "activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b,
                    "endings": endings, "label": label})
    return _split("validation", out)


# ---- the harness's own functions, re-exported for the YAMLs

from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs  # noqa: E402
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: E402
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)
