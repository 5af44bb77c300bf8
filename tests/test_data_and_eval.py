"""Corpora, calibration sampling and the perplexity loop."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from prunelab.data import calibration_segments, data_dir, evaluation_windows, load_corpus
from prunelab.data.corpora import Corpus
from prunelab.eval import perplexity
from prunelab.eval.perplexity import auto_batch_size
from tiny_models import CharTokenizer, random_ids, tiny_model

needs_data = pytest.mark.skipif(not (data_dir() / "wikitext-2-raw" / "wiki.test.raw").is_file(),
                                reason="shared/data not present (set PRUNELAB_DATA)")


@needs_data
def test_wikitext2_rows_follow_the_hf_convention():
    corpus = load_corpus("wikitext2", "test")
    assert len(corpus.rows) == 4358
    assert corpus.rows[0] == "" and corpus.rows[1] == " = Robert Boulter = \n"
    assert corpus.joined().startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")
    assert corpus.sha256 == load_corpus("wikitext2", "test").sha256


@needs_data
def test_other_local_corpora_load():
    assert len(load_corpus("ptb", "test").rows) == 3761
    assert len(load_corpus("ptb", "valid").rows) == 3370
    assert len(load_corpus("c4", "train").rows) == 1000
    with pytest.raises(ValueError, match="splits"):
        load_corpus("ptb", "train2")


def test_document_calibration_follows_the_sparsegpt_convention():
    docs = ["a" * 5, "b" * 40, "c" * 12, "d" * 9, "e" * 100]
    corpus = Corpus("c4", "train", docs, "x", "mem")
    got = calibration_segments(CharTokenizer(), corpus, n=6, seqlen=10, seed=3)
    rng = random.Random(3)
    expected = []
    for _ in range(6):
        while True:
            doc = docs[rng.randint(0, len(docs) - 1)]
            if len(doc) > 10:
                break
        start = rng.randint(0, len(doc) - 10 - 1)
        expected.append([ord(c) for c in doc[start:start + 10]])
    assert got.tolist() == expected
    assert torch.equal(got, calibration_segments(CharTokenizer(), corpus, n=6, seqlen=10, seed=3))
    assert not torch.equal(got, calibration_segments(CharTokenizer(), corpus, n=6, seqlen=10, seed=4))
    with pytest.raises(ValueError, match="no document of c4 is longer than 200 tokens"):
        calibration_segments(CharTokenizer(), corpus, n=1, seqlen=200)


def test_evaluation_windows_drop_the_tail():
    stream = torch.arange(103)
    w = evaluation_windows(stream, 10)
    assert w.shape == (10, 10) and w[-1, -1] == 99
    assert evaluation_windows(stream, 10, max_windows=3).shape == (3, 10)
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluation_windows(stream, 200)


def test_perplexity_equals_mean_token_nll_of_the_reference_loop():
    model = tiny_model("llama")
    windows = random_ids(5, 24, seed=4)
    result = perplexity(model, windows, batch_size=2, progress=False)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss for w in windows]  # HF mean over seqlen-1 tokens
    # The published loop: ppl = exp(Σ loss·seqlen / (windows·seqlen)).
    reference = math.exp(float(torch.stack(losses).mean()))
    assert result["ppl"] == pytest.approx(reference, rel=1e-5)
    assert (result["windows"], result["seqlen"], result["tokens"]) == (5, 24, 5 * 23)
    automatic = perplexity(model, windows, progress=False)  # 4096 // 24 windows per forward: all 5 at once
    assert automatic["batch_size"] == 170 and automatic["ppl"] == pytest.approx(reference, rel=1e-5)


def test_automatic_eval_batch_bounds_tokens_and_logits():
    assert auto_batch_size(512, 49152) == 8  # the embedded model: 4096 tokens, 805 MB of logits
    assert auto_batch_size(2048, 128256) == 1  # Llama-3: one 2048 window is already 1.05 GB of logits
    assert auto_batch_size(1024, 32000) == 4 and auto_batch_size(8192, 32000) == 1
