"""Run lm-evaluation-harness (``hf`` model, 0-shot) on the local task copies; runs inside the lm-eval venv.

    PRUNELAB_DATA=... /tmp/lmeval/venv/bin/python benchmarks/lmeval/run_lmeval.py --pretrained FOLDER \
        --tasks piqa,arc_easy --limit 300 --batch-size 32 --out DIR

One HFLM is loaded once; each task is a separate ``simple_evaluate`` call, timed on its own. Writes
``DIR/<task>.json`` per task: metrics, seconds, and per item the (log-likelihood, is_greedy) of every request and the
(context, continuation) strings the harness built. Before running, checks that each local YAML's prompt fields equal
the installed harness's own task YAML (so the local tasks are the harness's tasks on local files).
"""
import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_DIR = HERE / "tasks"
# prunelab name -> (local task, the harness's task)
TASKS = {"lambada": ("local_lambada_openai", "lambada_openai"), "piqa": ("local_piqa", "piqa"),
         "arc_easy": ("local_arc_easy", "arc_easy"), "arc_challenge": ("local_arc_challenge", "arc_challenge"),
         "hellaswag": ("local_hellaswag", "hellaswag"), "boolq": ("local_boolq", "boolq"),
         "winogrande": ("local_winogrande", "winogrande"), "openbookqa": ("local_openbookqa", "openbookqa"),
         "siqa": ("local_social_iqa", "social_iqa")}
PROMPT_FIELDS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter", "process_docs",
                 "fewshot_delimiter", "description")


def _norm(value):
    if callable(value):
        return inspect.getsource(value)
    return value


def check_prompt_fields(task_manager, local: str, harness: str) -> list[str]:
    from lm_eval.tasks._yaml_loader import load_yaml

    mine = load_yaml(task_manager.task_index[local].yaml_path)
    theirs = load_yaml(task_manager.task_index[harness].yaml_path)
    problems = []
    for key in PROMPT_FIELDS:
        a, b = mine.get(key), theirs.get(key)
        if key == "target_delimiter":
            a, b = a if a is not None else " ", b if b is not None else " "
        if _norm(a) != _norm(b):
            problems.append(f"{local}.{key} = {a!r} but the harness's {harness}.{key} = {b!r}")
    if [m["metric"] for m in mine["metric_list"]] != [m["metric"] for m in theirs["metric_list"]]:
        problems.append(f"{local}: metric_list differs from {harness}")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrained", required=True)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bootstrap-iters", type=int, default=100000,
                    help="for LAMBADA's perplexity stderr, computed after the timed run (the harness's default)")
    ap.add_argument("--dtype", default="float32",
                    help="model weights' dtype; the log-softmax runs in float32 whatever it is (softmax_dtype)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--strings-only", action="store_true",
                    help="no model: write the (context, continuation) strings the harness builds for every item")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import lm_eval
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.api.metrics import bootstrap_stderr, perplexity
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = [t for t in args.tasks.split(",") if t]
    tm = TaskManager(include_path=str(TASK_DIR))
    problems = [p for n in names for p in check_prompt_fields(tm, *TASKS[n])]
    if problems:
        sys.exit("local task YAMLs no longer match the harness:\n" + "\n".join(problems))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.strings_only:
        from lm_eval.tasks import get_task_dict

        for name in names:
            local, harness = TASKS[name]
            task = get_task_dict([local], tm)[local]
            task.set_config(key="num_fewshot", value=0)
            task.build_all_requests(limit=args.limit)
            docs: dict[int, list] = {}
            for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
                docs.setdefault(inst.doc_id, []).append(list(inst.arguments))
            golds = []
            for i, doc in enumerate(task.eval_docs):
                if args.limit is not None and i >= args.limit:
                    break
                if task.OUTPUT_TYPE != "multiple_choice":
                    golds.append(None)
                    continue
                gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
                golds.append(task.doc_to_choice(doc).index(gold) if isinstance(gold, str) else int(gold))
            (out / f"{name}.strings.json").write_text(json.dumps({"requests": [docs[k] for k in sorted(docs)],
                                                                 "golds": golds}))
            print(f"[lm-eval] {name}: strings of {len(docs)} items", flush=True)
        return
    start = time.perf_counter()
    # prunelab takes the log-softmax of the logits in float32 whatever the model's dtype; the harness's
    # softmax_dtype does the same (a no-op for a float32 model), so a bfloat16 comparison differs only by the forward.
    lm = HFLM(pretrained=args.pretrained, dtype=args.dtype, batch_size=args.batch_size, device="cpu",
              softmax_dtype="float32")
    load_seconds = time.perf_counter() - start
    meta = {"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "add_bos_token": lm.add_bos_token, "max_length": lm.max_length,
            "load_seconds": load_seconds, "batch_size": args.batch_size, "limit": args.limit, "dtype": args.dtype,
            "softmax_dtype": "float32", "pretrained": args.pretrained}
    for name in names:
        local, harness = TASKS[name]
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[local], limit=args.limit, task_manager=tm, log_samples=True,
                              bootstrap_iters=0, num_fewshot=0)
        seconds = time.perf_counter() - t0
        metrics = {k.split(",")[0]: v for k, v in res["results"][local].items()
                   if k.endswith(",none") and isinstance(v, (int, float))}
        items = []
        for s in sorted(res["samples"][local], key=lambda s: s["doc_id"]):
            items.append({"doc_id": s["doc_id"], "arguments": [list(a) for a in s["arguments"]],
                          "resps": [[float(r[0][0]), bool(r[0][1])] for r in s["resps"]],
                          **{k: s[k] for k in ("acc", "acc_norm") if k in s}})
        if name == "lambada":
            lls = [it["resps"][0][0] for it in items]
            metrics["perplexity_stderr"] = bootstrap_stderr(perplexity, lls, iters=args.bootstrap_iters)
        record = {"task": name, "harness_task": harness, "local_task": local, "n_items": len(items),
                  "metrics": metrics, "seconds": seconds, "meta": meta, "items": items,
                  "loadavg_before": load}
        (out / f"{name}.json").write_text(json.dumps(record))
        print(f"[lm-eval] {name}: {len(items)} items, {seconds:.1f}s, "
              + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
