"""Zero-shot scoring the way lm-evaluation-harness's ``hf`` model does it: requests -> log-likelihoods -> metrics.

Two steps, so a sweep over many pruned models of one family tokenizes once and scores many times::

    reqs = [build_requests(tokenizer, name, limit=100) for name in ("piqa", "arc_easy")]
    results = score_tasks(model, reqs)          # {"piqa": {...}, "arc_easy": {...}}

Tokenization follows the harness (``TemplateLM._encode_pair`` with ``HFLM.tok_encode``, lm-eval 0.4.13): trailing
whitespace of the context moves to the continuation; the context and context+continuation are each encoded with the
tokenizer's default special tokens (``add_bos_token`` unset, which is what the harness does for Llama-family
tokenizers such as SmolLM2's: no BOS is added), and the continuation tokens are ``whole[len(context_tokens):]``.
The model sees ``(context + continuation)[-(max_length + 1):][:-1]``.

Scoring: as the harness, rows are sorted longest first, right-padded with token 0 and run without an attention mask
(causal attention makes the padding invisible to real tokens), and requests whose model input is identical (e.g.
BoolQ's one-token " no"/" yes") share one forward pass, as the harness's logits cache does. Beyond the harness, where
the model family allows it (``SHAREABLE_MODEL_TYPES``), the choices of one context share a single packed row: the
context once, then each continuation (minus its last token) with position ids continuing from the context and a
block mask letting it see the context and itself only. Because the harness encodes the context on its own, every
choice's input starts with exactly these context tokens, so a packed row computes the same quantities as the separate
rows; scores differ only by float rounding, as they do between batch sizes. Batches are cut to waste the least
padding (``plan_batches``). The log-likelihood of a continuation is the sum of its tokens' log-softmax (fp32); it is
"greedy" when every continuation token is the argmax.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .perplexity import model_device
from .tasks import ALL_TASKS, HARNESS, METRIC_DEFINITIONS, TASKS, Item, TaskData, load_task, resolve_task_names

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 2048  # the harness's default when neither config nor tokenizer gives one
SUBSET_RULE = "the first N items in file order (the harness's --limit)"


@dataclass
class TaskRequests:
    """A task's items and their tokenized (context, continuation) requests; independent of any model weights."""
    task: str
    items: list[Item]
    contexts: list[list[int]]       # per request
    continuations: list[list[int]]  # per request
    owners: list[tuple[int, int]]   # per request: (item position, choice index)
    limit: int | None
    total_items: int
    data: dict
    tokenizer: str

    @property
    def name(self) -> str:
        return self.task

    @property
    def n_requests(self) -> int:
        return len(self.contexts)

    def tokens_sha256(self) -> str:
        digest = hashlib.sha256()
        for ctx, cont in zip(self.contexts, self.continuations):
            digest.update(json.dumps([ctx, cont]).encode())
        return digest.hexdigest()

    def identity(self) -> dict:
        """What these requests are, for a results store: same identity, same token ids. The tokenizer enters through
        the token ids alone: its name is often a local folder (a cache path that differs between hosts, and on one
        host between a first and a later load of a GGUF), which must not make a finished run look new."""
        task = TASKS[self.task]
        return {"task": self.task, "harness_task": task.harness_task, "split": task.split, "limit": self.limit,
                "items": len(self.items), "data_sha256": self.data["sha256"], "prompt_format": task.prompt_format,
                "tokens_sha256": self.tokens_sha256()}


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts)["input_ids"]]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """The harness's ``_encode_pair`` for a list of (context, continuation) strings."""
    fixed = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        fixed.append((context, continuation))
    unique_contexts = sorted({c for c, _ in fixed if c})
    ctx_ids = dict(zip(unique_contexts, _encode(tokenizer, unique_contexts)))
    wholes = sorted({c + x for c, x in fixed if c})
    whole_ids = dict(zip(wholes, _encode(tokenizer, wholes)))
    empties = sorted({x for c, x in fixed if not c})
    empty_ids = dict(zip(empties, _encode(tokenizer, empties)))
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for context, continuation in fixed:
        if not context:  # the harness conditions on the BOS (else EOS) token
            out.append(([prefix], list(empty_ids[continuation])))
            continue
        c = ctx_ids[context]
        out.append((list(c), list(whole_ids[context + continuation][len(c):])))
    return out


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def build_requests(tokenizer, task, limit: int | None = None, data_dir=None, source: str = "auto") -> TaskRequests:
    """Tokenize all requests of a task: ``task`` is a TaskData already loaded, or a name to load (first ``limit``
    items in file order)."""
    data = task if isinstance(task, TaskData) else load_task(task, limit=limit, data_dir=data_dir, source=source)
    limit = data.limit
    pairs, owners = [], []
    for pos, item in enumerate(data.items):
        for choice, pair in enumerate(item.pairs()):
            pairs.append(pair)
            owners.append((pos, choice))
    encoded = encode_pairs(tokenizer, pairs)
    for (pos, choice), (_, cont) in zip(owners, encoded):
        if not cont:
            raise ValueError(f"task {data.task.name}, item {data.items[pos].index}, choice {choice}: the "
                             "continuation is empty after tokenization")
    return TaskRequests(
        task=data.task.name, items=data.items, contexts=[c for c, _ in encoded], continuations=[x for _, x in encoded],
        owners=owners, limit=limit, total_items=data.total_items,
        data={"source": data.source, "files": data.files, "sha256": data.sha256, "provenance": data.provenance},
        tokenizer=_tokenizer_name(tokenizer))


def model_max_length(model, tokenizer=None) -> int:
    """The harness's ``resolve_max_length``: config n_positions / max_position_embeddings / n_ctx, then the
    tokenizer's model_max_length (unless 'infinite'), then 2048."""
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    value = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(value, int) and 0 < value < 10**12:
        return value
    return DEFAULT_MAX_LENGTH


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# Families whose forward takes explicit position_ids and uses a ready 4D attention mask as given (transformers 5),
# each checked against the one-sequence-per-request reference in tests/test_zeroshot.py. Sliding-window models are
# packed only while a row's positions fit in the window.
SHAREABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"})


def context_sharing_supported(model) -> bool:
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in SHAREABLE_MODEL_TYPES
            and getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "eager"))


def _sliding_window(model) -> int | None:
    window = getattr(model.config, "sliding_window", None)
    return window if isinstance(window, int) and window > 0 else None


@dataclass
class ScoreStats:
    forwards: int = 0               # sequences run through the model
    tokens: int = 0                 # real (unpadded) input tokens
    padded_tokens: int = 0          # batch x padded length, summed
    harness_tokens: int = 0         # tokens the harness's loop feeds the model for the same requests
    batches: int = 0
    shared_rows: int = 0            # rows holding one context and several continuations
    seconds: float = 0.0


@dataclass
class _Row:
    tokens: list[int]
    positions: list[int]                    # position id of each token
    segments: list[tuple[int, int]]         # (start, length) of continuation segments after the context
    ctx_len: int
    scored: list[tuple[int, list[int]]]     # (request, row indices whose logits predict its continuation tokens)

    @property
    def packed(self) -> bool:
        return bool(self.segments)


def _plan_rows(contexts, continuations, max_length: int, share: bool, window: int | None):
    """Rows to run: plain ones (context + continuation[:-1], identical inputs merged, as the harness) and, with
    ``share``, one packed row per distinct context: context + every continuation[:-1], each continuation attending
    to the context and to itself only, its positions continuing from the context's."""
    rows: list[_Row] = []
    plain: dict[tuple[int, ...], list[int]] = {}
    by_context: dict[tuple[int, ...], list[int]] = {}
    for r, (ctx, cont) in enumerate(zip(contexts, continuations)):
        if not ctx or not cont:
            raise ValueError(f"request {r}: empty context or continuation")
        if len(cont) > max_length:
            raise ValueError(f"request {r}: continuation of {len(cont)} tokens exceeds the model's {max_length}")
        fits = len(ctx) + len(cont) <= max_length + 1 and (window is None or len(ctx) + len(cont) - 1 <= window)
        if share and fits:
            by_context.setdefault(tuple(ctx), []).append(r)
        else:
            plain.setdefault(tuple((ctx + cont)[-(max_length + 1):][:-1]), []).append(r)
    for ctx, members in by_context.items():
        if len(members) == 1:  # nothing to share: an ordinary row
            r = members[0]
            plain.setdefault(tuple((list(ctx) + continuations[r])[:-1]), []).append(r)
            continue
        tokens, positions, segments, scored = list(ctx), list(range(len(ctx))), [], []
        seen: dict[tuple[int, ...], tuple[int, int]] = {}
        for r in members:
            seg = tuple(continuations[r][:-1])
            if seg not in seen:  # identical continuation prefixes (e.g. one-token answers) share a segment
                seen[seg] = (len(tokens), len(seg))
                if seg:
                    segments.append((len(tokens), len(seg)))
                tokens += seg
                positions += range(len(ctx), len(ctx) + len(seg))
            start, length = seen[seg]
            scored.append((r, [len(ctx) - 1] + list(range(start, start + length))))
        if not segments:  # only one-token continuations: the context alone is the input
            rows.append(_Row(list(ctx), list(range(len(ctx))), [], len(ctx), scored))
        else:
            rows.append(_Row(tokens, positions, segments, len(ctx), scored))
    for inp, members in plain.items():
        n = len(inp)
        rows.append(_Row(list(inp), list(range(n)), [], n,
                         [(r, list(range(n - len(continuations[r]), n))) for r in members]))
    rows.sort(key=lambda row: (-len(row.tokens), row.tokens))
    return rows


def plan_batches(lengths: list[int], batch_size: int, max_batch_tokens: int, overhead: int = 128) -> list[int]:
    """Batch sizes for rows sorted longest first, minimising padded tokens + ``overhead`` per forward pass (a fixed
    cost in token equivalents), with at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens a batch
    (a row longer than that runs alone). Exact dynamic programme over the sorted order."""
    n = len(lengths)
    best = [0.0] * (n + 1)
    choice = [1] * (n + 1)
    for k in range(n - 1, -1, -1):
        width = lengths[k]
        best[k], choice[k] = overhead + width + best[k + 1], 1
        for size in range(2, min(batch_size, n - k) + 1):
            if size * width > max_batch_tokens:
                break
            cost = overhead + size * width + best[k + size]
            if cost < best[k]:
                best[k], choice[k] = cost, size
    sizes, k = [], 0
    while k < n:
        sizes.append(choice[k])
        k += choice[k]
    return sizes


def _packed_mask(rows: list[_Row], width: int, dtype) -> torch.Tensor:
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    for b, row in enumerate(rows):
        n, L = len(row.tokens), row.ctx_len
        allowed[b, :L, :L] = torch.ones((L, L), dtype=torch.bool).tril()
        for start, length in row.segments:
            allowed[b, start:start + length, :L] = True
            allowed[b, start:start + length, start:start + length] = torch.ones((length, length), dtype=torch.bool).tril()
        if n < width:  # padding attends to itself only (never read)
            idx = torch.arange(n, width)
            allowed[b, idx, idx] = True
    mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def loglikelihoods(model, contexts: list[list[int]], continuations: list[list[int]], *, batch_size: int = 32,
                   max_batch_tokens: int = 8192, max_length: int | None = None, share_context: bool | None = None,
                   progress: bool = True, desc: str = "loglikelihood",
                   stats: ScoreStats | None = None) -> list[tuple[float, bool]]:
    """(summed log-probability, is_greedy) of each continuation given its context, in request order.

    Rows are sorted longest first and cut into batches of at most ``batch_size`` rows and ``max_batch_tokens``
    padded tokens that waste the least padding (``plan_batches``).
    ``share_context`` (default: when the model family supports it) runs a context once for all the continuations
    that follow it, in one packed row with a block attention mask and position ids continuing from the context:
    the same quantities as separate rows (causal attention means the context never sees a continuation), computed
    once; results then differ from separate rows only by float rounding, as between batch sizes."""
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    max_length = max_length or model_max_length(model)
    if share_context is None:
        share_context = context_sharing_supported(model)
    elif share_context and not context_sharing_supported(model):
        raise ValueError(f"context sharing is not supported for model type {model.config.model_type!r}")
    stats = stats if stats is not None else ScoreStats()
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    rows = _plan_rows(contexts, continuations, max_length, share_context, _sliding_window(model))
    harness_inputs = {tuple((c + x)[-(max_length + 1):][:-1]) for c, x in zip(contexts, continuations)}
    stats.harness_tokens += sum(len(t) for t in harness_inputs)
    results: list[tuple[float, bool] | None] = [None] * len(contexts)
    use_keep = _supports_logits_to_keep(model)
    bar = tqdm(total=len(contexts), desc=desc, unit="req", disable=not progress)
    start = time.perf_counter()
    k = 0
    with torch.no_grad():
        for n in plan_batches([len(row.tokens) for row in rows], batch_size, max_batch_tokens):
            width = len(rows[k].tokens)
            batch = rows[k:k + n]
            k += n
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            for b, row in enumerate(batch):
                inputs[b, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            kwargs = {}
            if any(row.packed for row in batch):
                positions = torch.zeros((len(batch), width), dtype=torch.long)
                for b, row in enumerate(batch):
                    positions[b, :len(row.positions)] = torch.tensor(row.positions, dtype=torch.long)
                    positions[b, len(row.positions):] = torch.arange(len(row.positions), width)
                kwargs = {"position_ids": positions.to(device),
                          "attention_mask": _packed_mask(batch, width, dtype).to(device)}
                stats.shared_rows += sum(row.packed for row in batch)
            needed = sorted({p for row in batch for _, idx in row.scored for p in idx})
            if use_keep:
                keep = torch.tensor(needed, dtype=torch.long, device=device)
                logits = model(input_ids=inputs.to(device), logits_to_keep=keep, use_cache=False, **kwargs).logits
                where = {p: i for i, p in enumerate(needed)}
            else:
                logits = model(input_ids=inputs.to(device), use_cache=False, **kwargs).logits
                where = None
            for b, row in enumerate(batch):
                for r, idx in row.scored:
                    cols = [where[p] for p in idx] if where is not None else idx
                    scored = logits[b, cols].float().log_softmax(-1)
                    target = torch.tensor(continuations[r], dtype=torch.long, device=scored.device)
                    ll = float(scored.gather(1, target[:, None]).sum())
                    results[r] = (ll, bool((scored.argmax(-1) == target).all()))
                bar.update(len(row.scored))
            stats.forwards += len(batch)
            stats.tokens += sum(len(row.tokens) for row in batch)
            stats.padded_tokens += len(batch) * width
            stats.batches += 1
    bar.close()
    stats.seconds += time.perf_counter() - start
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------- metrics

def mean_stderr(values: list[float]) -> float | None:
    """The harness's ``mean_stderr``: sample standard deviation (n - 1) / sqrt(n)."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _argmax(values) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def item_outcomes(item: Item, scores: list[tuple[float, bool]]) -> dict:
    """Per-item metric values from the item's (log-likelihood, greedy) per choice, the harness's way."""
    lls = [s[0] for s in scores]
    if item.gold is None:  # loglikelihood task (LAMBADA): one target
        return {"ll": lls[0], "acc": float(scores[0][1])}
    pred = _argmax(lls)
    pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, item.choices)])
    return {"acc": float(pred == item.gold), "acc_norm": float(pred_norm == item.gold), "pred": pred,
            "pred_norm": pred_norm}


def task_metrics(task_name: str, outcomes: list[dict]) -> dict:
    task = TASKS[task_name]
    metrics = {}
    for name in task.metrics:
        if name == "perplexity":
            lls = [o["ll"] for o in outcomes]
            mean_ll = sum(lls) / len(lls)
            ppl = math.exp(-mean_ll) if -mean_ll < 700 else float("inf")
            se = mean_stderr(lls)
            metrics["perplexity"] = ppl
            metrics["perplexity_stderr"] = ppl * se if se is not None and math.isfinite(ppl) else None
        else:
            values = [o[name] for o in outcomes]
            metrics[name] = sum(values) / len(values)
            metrics[f"{name}_stderr"] = mean_stderr(values)
    return metrics


def score_task(model, requests: TaskRequests, *, batch_size: int | None = None, max_batch_tokens: int = 8192,
               share_context: bool | None = None, progress: bool = True, details: bool = False) -> dict:
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    stats = ScoreStats()
    scores = loglikelihoods(model, requests.contexts, requests.continuations, batch_size=batch_size,
                            max_batch_tokens=max_batch_tokens, share_context=share_context, progress=progress,
                            desc=requests.task, stats=stats)
    per_item: list[list[tuple[float, bool]]] = [[] for _ in requests.items]
    for (pos, _), score in zip(requests.owners, scores):
        per_item[pos].append(score)
    outcomes = [item_outcomes(item, s) for item, s in zip(requests.items, per_item)]
    task = TASKS[requests.task]
    result = {
        "task": task.name,
        "harness_task": task.harness_task,
        "dataset": task.dataset,
        "split": task.split,
        "items": len(requests.items),
        "total_items": requests.total_items,
        "limit": requests.limit,
        "subset": SUBSET_RULE if requests.limit is not None else "all items",
        **task_metrics(task.name, outcomes),
        "metric_definitions": {m: METRIC_DEFINITIONS[m] for m in task.metrics} | {"stderr": METRIC_DEFINITIONS["stderr"]},
        "prompt_format": task.prompt_format,
        "prompt": task.prompt,
        "num_fewshot": 0,
        "data": requests.data,
        "tokenizer": requests.tokenizer,
        "tokens_sha256": requests.tokens_sha256(),
        "batch_size": batch_size,
        "requests": requests.n_requests,
        "context_sharing": stats.shared_rows > 0,
        "forward_rows": stats.forwards,
        "tokens": stats.tokens,
        "padded_tokens": stats.padded_tokens,
        "harness_tokens": stats.harness_tokens,
        "seconds": stats.seconds,
        "tokens_per_second": stats.tokens / stats.seconds if stats.seconds > 0 else None,
        "harness_tokens_per_second": stats.harness_tokens / stats.seconds if stats.seconds > 0 else None,
    }
    if task.note:
        result["note"] = task.note
    if details:
        result["details"] = [
            {"index": item.index, "id": item.id, "gold": item.gold, "loglikelihoods": [s[0] for s in sc],
             "greedy": [s[1] for s in sc], **{k: v for k, v in o.items() if k not in ("ll",)}}
            for item, sc, o in zip(requests.items, per_item, outcomes)]
    return result


def score_tasks(model, requests_list: list[TaskRequests], *, batch_size: int | None = None, max_batch_tokens: int = 8192,
                share_context: bool | None = None, progress: bool = True, details: bool = False) -> dict:
    """Score several tasks' requests with one model: {task name: result}."""
    was_training = model.training
    model.eval()
    try:
        return {r.task: score_task(model, r, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                   share_context=share_context, progress=progress, details=details)
                for r in requests_list}
    finally:
        model.train(was_training)


def evaluate_tasks(model, tokenizer, tasks, *, limit: int | None = None, data_dir=None, batch_size: int | None = None,
                   max_batch_tokens: int = 8192, share_context: bool | None = None, progress: bool = True,
                   details: bool = False) -> dict:
    """build_requests + score_tasks for task names ('all', 'piqa,arc_easy' or a list)."""
    names = resolve_task_names(tasks)
    requests = [build_requests(tokenizer, name, limit=limit, data_dir=data_dir) for name in names]
    return score_tasks(model, requests, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                       share_context=share_context, progress=progress, details=details)


__all__ = ["ALL_TASKS", "TaskRequests", "build_requests", "encode_pairs", "loglikelihoods", "score_task", "score_tasks",
           "evaluate_tasks", "mean_stderr", "item_outcomes", "task_metrics", "model_max_length", "HARNESS"]
