"""Calibration segments and evaluation windows, deterministic for a given seed (same inputs, same bytes)."""
from __future__ import annotations

import hashlib
import random

import torch

from .corpora import Corpus

def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()


def tokenize_stream(tokenizer, corpus: Corpus) -> torch.Tensor:
    """The corpus joined by its convention and tokenized once: a 1-D LongTensor."""
    return tokenizer(corpus.joined(), return_tensors="pt").input_ids[0]


def calibration_segments(tokenizer, corpus: Corpus, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``n`` segments of ``seqlen`` tokens, the SparseGPT/Wanda convention.

    Python ``random`` is seeded with ``seed``; for document corpora (C4) a random document longer than
    ``seqlen`` tokens is drawn (redrawing shorter ones) and a random offset inside it taken; for running-text
    corpora (``corpus.stream``: WikiText-2, PTB) the offset is drawn in the whole tokenized stream.
    """
    if n < 1 or seqlen < 2:
        raise ValueError(f"calibration needs n >= 1 and seqlen >= 2, got n={n}, seqlen={seqlen}")
    rng = random.Random(seed)
    segments = []
    if corpus.stream or len(corpus.rows) == 1:
        stream = tokenize_stream(tokenizer, corpus)
        if stream.numel() <= seqlen:
            raise ValueError(f"{corpus.name} has {stream.numel()} tokens, too few for segments of {seqlen}")
        for _ in range(n):
            start = rng.randint(0, stream.numel() - seqlen - 1)
            segments.append(stream[start:start + seqlen])
        return torch.stack(segments)
    cache: dict[int, list[int]] = {}

    def tokens(i):
        if i not in cache:
            cache[i] = tokenizer(corpus.rows[i]).input_ids
        return cache[i]

    longest = 0
    for _ in range(n):
        for _attempt in range(100 * len(corpus.rows)):
            ids = tokens(rng.randint(0, len(corpus.rows) - 1))
            longest = max(longest, len(ids))
            if len(ids) > seqlen:
                break
        else:
            raise ValueError(f"no document of {corpus.name} is longer than {seqlen} tokens (longest seen: {longest}); "
                             "use a shorter --calib-seqlen")
        start = rng.randint(0, len(ids) - seqlen - 1)
        segments.append(torch.tensor(ids[start:start + seqlen], dtype=torch.long))
    return torch.stack(segments)


def evaluation_windows(stream: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens from the start, tail dropped: shape (windows, seqlen)."""
    count = stream.numel() // seqlen
    if count == 0:
        raise ValueError(f"the evaluation text has {stream.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        count = min(count, max_windows)
    return stream[: count * seqlen].view(count, seqlen)


def corpus_windows(tokenizer, corpus: Corpus, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Evaluation windows of a corpus under its own rule (C4: at most 256 windows, SparseGPT's truncation)."""
    cap = corpus.max_eval_windows
    if cap is not None:
        max_windows = cap if max_windows is None else min(max_windows, cap)
    return evaluation_windows(tokenize_stream(tokenizer, corpus), seqlen, max_windows)
