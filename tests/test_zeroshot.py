"""Zero-shot scoring (lm-evaluation-harness conventions) and generated samples.

Tiny random models check the arithmetic against a slow reference; the real data (when present) checks item counts,
labels and the exact request strings the harness builds."""
import collections
import hashlib
import json
import math
import statistics

import pytest
import torch

from prunelab.cli import main
from prunelab.data import data_dir
from prunelab.eval.generation import PROMPTS, generate_samples, greedy_continuation
from prunelab.eval.tasks import (ALL_TASKS, TASKS, Item, hellaswag_preprocess, load_task, resolve_task_names,
                                 split_hellaswag_ctx)
from prunelab.eval.zeroshot import (build_requests, context_sharing_supported, encode_pairs, item_outcomes,
                                    loglikelihoods, mean_stderr, task_metrics)
from tiny_models import save_tiny_folder, tiny_model, tiny_tokenizer

needs_data = pytest.mark.skipif(not (data_dir() / "piqa" / "valid.jsonl").is_file(),
                                reason="shared/data not present (set PRUNELAB_DATA)")

# Several continuations per context (shared), a one-token continuation, a context with trailing whitespace,
# and continuations of different lengths.
PAIRS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("The quick brown fox", " sleeps."),
    ("The quick brown fox", " x"),
    ("Pruning removes weights ", "from a network"),
    ("Calibration data gives", " the statistics of each layer's inputs."),
    ("Calibration data gives", " nothing."),
    ("outputs close to the dense model.", " The"),
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def reference_scores(model, encoded):
    """One full-sequence forward per request: summed log-probs of the continuation tokens, and greedy match."""
    out = []
    with torch.no_grad():
        for ctx, cont in encoded:
            ids = torch.tensor([ctx + cont])
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            rows = logp[len(ctx) - 1:len(ctx) + len(cont) - 1]
            target = torch.tensor(cont)
            out.append((float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
    return out


def test_encode_pair_follows_the_harness(tok):
    # trailing whitespace moves to the continuation; continuation = whole[len(context):]
    assert encode_pairs(tok, [("Pruning removes weights ", "from")]) == encode_pairs(tok, [("Pruning removes weights",
                                                                                           " from")])
    (ctx, cont), = encode_pairs(tok, [("The quick brown", " fox jumps")])
    assert ctx == tok("The quick brown")["input_ids"]
    assert ctx + cont == tok("The quick brown fox jumps")["input_ids"]


@pytest.mark.parametrize("family,window", [("llama", None), ("qwen2", None), ("qwen3", None), ("gemma2", None),
                                           ("gemma2", 64), ("gemma3_text", 64), ("mistral", 64), ("opt", None),
                                           ("gpt2", None)])
def test_scores_equal_the_slow_reference(family, window, tok):
    """Plain and packed rows, batch 1 and 16, equal one full forward per request. ``window`` widens a tiny model's
    sliding window so that its rows can be packed (with the tiny default of 6-8 positions they fall back to plain)."""
    model = tiny_model(family, vocab=len(tok))
    if window:
        model.config.sliding_window = window
    encoded = encode_pairs(tok, PAIRS)
    ctxs, conts = [c for c, _ in encoded], [x for _, x in encoded]
    expected = reference_scores(model, encoded)
    runs = {"plain, batch 1": loglikelihoods(model, ctxs, conts, batch_size=1, share_context=False, progress=False),
            "plain, batch 16": loglikelihoods(model, ctxs, conts, batch_size=16, share_context=False, progress=False)}
    if context_sharing_supported(model):
        runs["shared, batch 1"] = loglikelihoods(model, ctxs, conts, batch_size=1, share_context=True, progress=False)
        runs["shared, batch 16"] = loglikelihoods(model, ctxs, conts, batch_size=16, share_context=True,
                                                  progress=False)
    for name, got in runs.items():
        for (ll, greedy), (ref_ll, ref_greedy) in zip(got, expected):
            assert ll == pytest.approx(ref_ll, abs=1e-4), name
            assert greedy == ref_greedy, name
    from prunelab.eval.zeroshot import ScoreStats
    stats = ScoreStats()
    loglikelihoods(model, ctxs, conts, progress=False, stats=stats)
    assert (stats.shared_rows > 0) == (context_sharing_supported(model) and (family, window) != ("gemma2", None))


def test_context_sharing_really_shares(tok):
    model = tiny_model("llama", vocab=len(tok))
    assert context_sharing_supported(model) and not context_sharing_supported(tiny_model("gpt2", vocab=len(tok)))
    encoded = encode_pairs(tok, PAIRS)
    from prunelab.eval.zeroshot import ScoreStats
    plain, shared = ScoreStats(), ScoreStats()
    loglikelihoods(model, *map(list, zip(*encoded)), share_context=False, progress=False, stats=plain)
    loglikelihoods(model, *map(list, zip(*encoded)), share_context=True, progress=False, stats=shared)
    assert shared.shared_rows == 2 and shared.tokens < plain.tokens == plain.harness_tokens == shared.harness_tokens


def test_greedy_flag(tok):
    model = tiny_model("llama", vocab=len(tok))
    ctx = tok("The quick brown fox")["input_ids"]
    new, _ = greedy_continuation(model, ctx, 4)
    wrong = new[:2] + [(new[2] + 1) % len(tok)] + new[3:]
    (ll_g, g), (ll_w, w) = loglikelihoods(model, [ctx, ctx], [new, wrong], share_context=False, progress=False)
    assert g and not w and ll_g > ll_w


def test_long_requests_are_left_truncated_like_the_harness(tok):
    model = tiny_model("llama", vocab=len(tok))  # max_position_embeddings = 128
    ctx = tok("The quick brown fox jumps over the lazy dog. " * 20)["input_ids"]
    cont = tok(" Pruning removes weights")["input_ids"]
    assert len(ctx) + len(cont) > 129
    (ll, _), = loglikelihoods(model, [ctx], [cont], progress=False)
    (ref, _), = reference_scores(model, [((ctx + cont)[-129:][:-len(cont)], cont)])
    assert ll == pytest.approx(ref, abs=1e-4)


def test_acc_acc_norm_and_stderr_arithmetic():
    # choice 1 has the best raw log-likelihood; per character, choice 0 wins (harness acc_norm: ll / len(choice))
    item = Item(0, ["ctx"], [" aaaaaaaaaa", " b"], gold=0, choices=["aaaaaaaaaa", "b"])
    out = item_outcomes(item, [(-4.0, False), (-3.0, False)])
    assert (out["pred"], out["acc"], out["pred_norm"], out["acc_norm"]) == (1, 0.0, 0, 1.0)
    tie = item_outcomes(Item(1, ["c"], [" a", " b"], 1, ["a", "b"]), [(-1.0, False), (-1.0, False)])
    assert tie["pred"] == 0 and tie["acc"] == 0.0  # ties go to the first choice (numpy argmax)
    outcomes = [{"acc": a, "acc_norm": b} for a, b in [(1, 1), (0, 1), (1, 0), (1, 1), (0, 0)]]
    m = task_metrics("piqa", outcomes)
    assert m["acc"] == pytest.approx(0.6) and m["acc_norm"] == pytest.approx(0.6)
    assert m["acc_stderr"] == pytest.approx(statistics.stdev([1, 0, 1, 1, 0]) / math.sqrt(5))
    assert mean_stderr([1.0]) is None


def test_lambada_accuracy_and_perplexity():
    lls = [-1.0, -3.0, -0.5, -2.5]
    outcomes = [item_outcomes(Item(i, ["c"], [" w"], None), [(ll, ll > -1.5)]) for i, ll in enumerate(lls)]
    m = task_metrics("lambada", outcomes)
    assert m["acc"] == pytest.approx(0.5)
    assert m["perplexity"] == pytest.approx(math.exp(1.75))  # exp(-mean ll): per item, not per token
    assert m["perplexity_stderr"] == pytest.approx(math.exp(1.75) * statistics.stdev(lls) / 2)
    item = TASKS["lambada"].to_item(0, {"text": "he said that it was a dog"})
    assert item.pairs() == [("he said that it was a", " dog")] and item.gold is None


def test_winogrande_partial_scoring():
    record = {"qID": "q", "sentence": "Sarah was a better surgeon than Maria so _ always got the harder cases.",
              "option1": "Sarah", "option2": "Maria", "answer": "1"}
    item = TASKS["winogrande"].to_item(0, record)
    assert item.pairs() == [("Sarah was a better surgeon than Maria so Sarah", " always got the harder cases."),
                            ("Sarah was a better surgeon than Maria so Maria", " always got the harder cases.")]
    assert item.gold == 0
    # the option sits in the context, so only the shared continuation is scored
    out = item_outcomes(item, [(-5.0, False), (-7.0, False)])
    assert out["acc"] == 1.0


def test_hellaswag_reconstruction_rules():
    assert split_hellaswag_ctx("A man is sitting on a roof. he") == ("A man is sitting on a roof.", "he")
    assert split_hellaswag_ctx("Unroll your mat. Sit down.") == ("Unroll your mat. Sit down.", "")
    assert split_hellaswag_ctx("two men") == ("", "two men")
    rec = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "endings": ["a", "b", "c", "d"], "label": "3"}
    assert TASKS["hellaswag"].to_item(0, rec).contexts == ["Roof shingle removal: A man is sitting on a roof. He"]
    assert hellaswag_preprocess("Family Life: [header] How to x [title] Do y [step] now. ") == \
        "Family Life: How to x. Do y now."


def test_task_names():
    assert resolve_task_names("all") == list(ALL_TASKS) and len(ALL_TASKS) == 9
    assert resolve_task_names("piqa, social_iqa,lambada_openai,piqa") == ["piqa", "siqa", "lambada"]
    with pytest.raises(ValueError, match="unknown task 'mmlu'.*choose from"):
        resolve_task_names("piqa,mmlu")


def test_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="PRUNELAB_DATA"):
        load_task("piqa", data_dir=tmp_path)


# ---------------------------------------------------------------- generation

def manual_greedy(model, ids, n):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


@pytest.mark.parametrize("family", ["llama", "gemma2", "opt", "gpt2"])
def test_generation_is_deterministic_and_greedy(family, tok):
    model = tiny_model(family, vocab=len(tok))
    a = generate_samples(model, tok, max_new_tokens=6)
    b = generate_samples(model, tok, max_new_tokens=6)
    assert a == [{**r, "seconds": s["seconds"]} for r, s in zip(b, a)]
    assert [r["prompt"] for r in a] == list(PROMPTS)
    for record in a:
        ids = tok(record["prompt"])["input_ids"]
        expected = manual_greedy(model, ids, 6)[len(ids):]
        if tok.eos_token_id in expected:
            expected = expected[:expected.index(tok.eos_token_id) + 1]
        assert record["token_ids"] == expected
        assert record["continuation"] == tok.decode(expected, skip_special_tokens=True)


def test_generation_stops_at_eos(tok):
    model = tiny_model("llama", vocab=len(tok))
    ids = tok("The quick brown fox")["input_ids"]
    first = manual_greedy(model, ids, 1)[-1]
    new, stop = greedy_continuation(model, ids, 10, eos_token_id=first)
    assert new == [first] and stop == "eos"


# ---------------------------------------------------------------- API and CLI on a tiny model folder

@needs_data
def test_cli_eval_tasks_and_generate(tmp_path, capsys):
    src = save_tiny_folder("llama", tmp_path / "m")
    out = tmp_path / "eval.json"
    # (the tiny model reads 128 positions: PIQA's long answers would not fit, as in the harness)
    assert main(["eval", str(src), "--tasks", "arc_easy,winogrande,lambada", "--limit", "4", "--generate",
                 "--max-new-tokens", "3", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert "ppl" not in result  # --tasks without --data skips perplexity
    assert set(result["tasks"]) == {"arc_easy", "winogrande", "lambada"}
    arc = result["tasks"]["arc_easy"]
    assert (arc["items"], arc["total_items"], arc["limit"], arc["split"]) == (4, 2376, 4, "test")
    assert arc["data"]["sha256"] == "ce32a0774b4beb1977d2c6b16dda5dd2b24fdc9c7f506882c452678676bd09be"
    assert "acc_norm_stderr" in arc and arc["metric_definitions"]["acc_norm"] and arc["tokens"] > 0
    assert "lm-evaluation-harness 0.4.13 `arc_easy`" in arc["prompt_format"]
    assert "perplexity" in result["tasks"]["lambada"]
    assert len(result["samples"]) == len(PROMPTS) and result["samples"][0]["new_tokens"] <= 3
    capsys.readouterr()
    # --data explicit keeps perplexity alongside the tasks
    assert main(["eval", str(src), "--data", "wikitext2", "--seqlen", "32", "--max-windows", "2", "--tasks", "boolq",
                 "--limit", "2", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["windows"] == 2 and result["tasks"]["boolq"]["items"] == 2


def test_cli_errors_and_generate(tmp_path, capsys, monkeypatch):
    src = save_tiny_folder("llama", tmp_path / "m")
    assert main(["eval", str(src), "--tasks", "piqa,nope", "--quiet"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub fallback must not be tried for real in a test
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["eval", str(src), "--tasks", "piqa", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "task piqa" in err and "baber/piqa" in err and "PRUNELAB_DATA" in err
    out = tmp_path / "gen.json"
    assert main(["generate", str(src), "--prompt", "The quick", "--max-new-tokens", "2", "--json", str(out),
                 "--quiet"]) == 0
    samples = json.loads(out.read_text())["samples"]
    assert [s["prompt"] for s in samples] == ["The quick"] and samples[0]["new_tokens"] <= 2


# ---------------------------------------------------------------- the real data

EXPECTED = {"lambada": 5153, "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042,
            "boolq": 3270, "winogrande": 1267, "openbookqa": 500, "siqa": 1954}
# sha256 of json.dumps([[context, continuation], ...]) of item 0 as lm-evaluation-harness 0.4.13 builds it on the
# same local files (benchmarks/lmeval/run_lmeval.py --strings-only); HellaSwag 3505 has WikiHow brackets.
HARNESS_REQUESTS = {
    ("lambada", 0): "c2006412597a922f5784065a4fe34b4d7c606f7f33e750824ee3e02c331c923a",
    ("piqa", 0): "6b5a24e64866a8459edf1891c1904652013104135c51d19e5aa3bc1bdff25f96",
    ("arc_easy", 0): "e59de58b1a219ca262a7517ab20a87bdfadff368a5b13c20b55b9e89bd7556bf",
    ("arc_challenge", 0): "149eb4fa251dfb559e54d83438a277aad0e9e736ef550e8e807869760f833578",
    ("hellaswag", 0): "c5fc8cb229856b6ec27a6ea213bb8a25c9033306dce633439b750e0d07c79958",
    ("hellaswag", 3505): "ccb83d255ff4ef0a1372c50b6249b00c5d6a06dad645ff92d4bb730fe4658adb",
    ("boolq", 0): "00e14e219bf17eed899c278859ea43ccc358717f64156bc9f10c1274e88b96e3",
    ("winogrande", 0): "0c2591afcd5ec73c49d259a3fdb04823436c83d90519b3942640c588410719fc",
    ("openbookqa", 0): "5170e761a2c4b214b63fb4e8df448f4cd6361f968dbe0e5505e987dabff9e2db",
    ("siqa", 0): "11a7f62959f222827255af7e3330a8c5784d7cf4c7d82b4940d25dce5fa9610e",
}
HARNESS_GOLD = {"piqa": 0, "arc_easy": 0, "arc_challenge": 2, "hellaswag": 3, "boolq": 0, "winogrande": 1,
                "openbookqa": 1, "siqa": 2}


@needs_data
@pytest.mark.parametrize("name", ALL_TASKS)
def test_real_data_counts_labels_and_harness_strings(name):
    data = load_task(name)
    assert data.total_items == len(data.items) == EXPECTED[name]
    assert all(item.index == i for i, item in enumerate(data.items))
    assert len(data.sha256) == 64
    for item in data.items:
        if item.gold is not None:
            assert 0 <= item.gold < len(item.pairs()) and len(item.choices) == len(item.pairs())
        assert all(ctx and cont.startswith(" ") for ctx, cont in item.pairs())
    for (task, index), digest in HARNESS_REQUESTS.items():
        if task == name:
            got = json.dumps([list(p) for p in data.items[index].pairs()])
            assert hashlib.sha256(got.encode()).hexdigest() == digest, got[:300]
    if name in HARNESS_GOLD:
        assert data.items[0].gold == HARNESS_GOLD[name]
    golds = collections.Counter(item.gold for item in data.items)
    # piqa, boolq, hellaswag, openbookqa: the counts in each SOURCE.md; the others: the harness's own golds on the
    # same files (which equal ours item by item: run_lmeval.py --strings-only)
    known = {"piqa": {0: 910, 1: 928}, "boolq": {0: 1237, 1: 2033}, "hellaswag": {0: 2515, 1: 2485, 2: 2584, 3: 2458},
             "openbookqa": {0: 138, 1: 126, 2: 132, 3: 104}, "arc_easy": {0: 596, 1: 585, 2: 633, 3: 561, 4: 1},
             "arc_challenge": {0: 266, 1: 311, 2: 310, 3: 285}, "winogrande": {0: 628, 1: 639},
             "siqa": {0: 643, 1: 654, 2: 657}, "lambada": {None: 5153}}
    assert dict(golds) == known[name]


@needs_data
def test_readable_prompt_spot_checks():
    assert load_task("piqa", limit=1).items[0].pairs()[0] == (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will "
        "also need to supply it with a water bottle and a food dish.")
    assert load_task("hellaswag", limit=1).items[0].pairs()[3] == (
        "Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")
    assert load_task("siqa", limit=1).items[0].pairs()[1] == (
        "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before "
        "this?\nA:", " Go home and see Riley")
    boolq = load_task("boolq", limit=1).items[0]
    assert boolq.contexts[0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert boolq.continuations == [" no", " yes"]
    assert len(load_task("arc_easy", limit=7).items) == 7  # --limit: the first N in file order


@needs_data
def test_build_requests_with_a_tokenizer(tok):
    reqs = build_requests(tok, "arc_challenge", limit=3)
    assert reqs.n_requests == sum(len(i.pairs()) for i in reqs.items)
    ident = reqs.identity()
    assert ident["items"] == 3 and ident["harness_task"] == "arc_challenge" and len(ident["tokens_sha256"]) == 64
    assert build_requests(tok, "arc_challenge", limit=3).tokens_sha256() == reqs.tokens_sha256()


@needs_data
def test_request_identity_does_not_depend_on_where_the_tokenizer_was_loaded_from(tok, tmp_path):
    """A results store keys runs by this identity: the same tokenizer saved in two folders (two hosts' caches)
    must give the same key, while the token ids (what decides the result) are still part of it."""
    from transformers import AutoTokenizer

    loaded = []
    for folder in ("host-a-cache", "host-b-cache"):
        tok.save_pretrained(tmp_path / folder)
        loaded.append(AutoTokenizer.from_pretrained(tmp_path / folder))
    a, b = (build_requests(t, "arc_challenge", limit=3) for t in loaded)
    assert a.tokenizer != b.tokenizer  # the names differ (kept in each result's record) ...
    assert a.identity() == b.identity()  # ... the identity does not
    assert build_requests(tok, "arc_challenge", limit=2).identity()["tokens_sha256"] != a.identity()["tokens_sha256"]


def test_hf_source_maps_the_harness_datasets(monkeypatch):
    """source='hf' reads the datasets the harness names; their rows map onto the local layouts (fake rows here)."""
    import sys
    import types

    rows = {
        ("allenai/ai2_arc", "ARC-Easy", "test"): [{"id": "x", "question": "Why?", "answerKey": "B",
                                                   "choices": {"text": ["a", "b"], "label": ["A", "B"]}}],
        ("allenai/openbookqa", "main", "test"): [{"id": "y", "question_stem": "Stem", "answerKey": "A",
                                                  "choices": {"text": ["c", "d"], "label": ["A", "B"]}}],
        ("Rowan/hellaswag", None, "validation"): [{"ind": 4, "activity_label": "Sumo", "ctx_a": "Two men stand.",
                                                   "ctx_b": "they", "endings": ["a [title] b", "c", "d", "e"],
                                                   "label": "2"}],
        ("allenai/winogrande", "winogrande_xl", "validation"): [{"sentence": "A _ b.", "option1": "x",
                                                                 "option2": "y", "answer": "2"}],
    }
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda path, name=None, split=None: rows[(path, name, split)]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    from prunelab.data import hub
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)  # no network in CI: the fake answers
    arc = load_task("arc_easy", source="hf")
    assert arc.items[0].pairs() == [("Question: Why?\nAnswer:", " a"), ("Question: Why?\nAnswer:", " b")]
    assert arc.items[0].gold == 1 and arc.source == "hf:allenai/ai2_arc"
    assert load_task("openbookqa", source="hf").items[0].pairs()[1] == ("Stem", " d")
    hs = load_task("hellaswag", source="hf").items[0]
    assert hs.contexts == ["Sumo: Two men stand. They"] and hs.continuations[0] == " a. b" and hs.gold == 2
    wg = load_task("winogrande", source="hf").items[0]
    assert wg.pairs() == [("A x", " b."), ("A y", " b.")] and wg.gold == 1
