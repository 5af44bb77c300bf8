"""Where corpora and tasks are read from: the data directory first, then the Hugging Face Hub (mocked: no network
in CI), and one clear error before any model is loaded when neither can be had."""
import gzip
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import prunelab.api as api
from prunelab.cli import main
from prunelab.data import DataUnavailableError, calibration_segments, corpus_windows, load_corpus
from prunelab.data import hub
from prunelab.data.corpora import known_corpus_of, parse_hf_spec
from prunelab.eval.tasks import load_task
from prunelab.models.loading import sha256_file
from tiny_models import CharTokenizer


@pytest.fixture
def empty_data(tmp_path, monkeypatch):
    """An empty data directory and an empty HF cache: nothing local, nothing cached."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("PRUNELAB_DATA", str(folder))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "cached_file", lambda hf: None)
    return folder


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """hf_hub_download writing the files given in ``fake_hub.files`` (filename -> writer) into a snapshot folder."""
    import huggingface_hub

    calls = []

    def download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        path = tmp_path / "cache" / f"datasets--{repo_id.replace('/', '--')}" / "snapshots" / "c0ffee" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        download.files[filename](path)
        return str(path)

    download.files, download.calls = {}, calls
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)
    return download


def _parquet(rows, column="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq
    return lambda path: pq.write_table(pa.table({column: rows}), path)


def _jsonl_gz(docs):
    return lambda path: path.write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs).encode()))


def test_local_copy_wins_and_is_recorded(empty_data, fake_hub):
    (empty_data / "wikitext-2-raw").mkdir()
    (empty_data / "wikitext-2-raw" / "wiki.test.raw").write_text(" \n = A = \n text\n")
    corpus = load_corpus("wikitext2")
    assert corpus.rows == ["", " = A = \n", " text\n"] and corpus.joiner == "\n\n" and corpus.stream
    assert corpus.provenance["kind"] == "local"
    assert corpus.provenance["sha256"] == sha256_file(empty_data / "wikitext-2-raw" / "wiki.test.raw")
    assert fake_hub.calls == []


def test_wikitext_from_the_hub_has_the_local_rules_and_provenance(empty_data, fake_hub):
    fake_hub.files["wikitext-2-raw-v1/test-00000-of-00001.parquet"] = _parquet(["", " = A = \n", " text\n"])
    corpus = load_corpus("wikitext2", "test")
    assert fake_hub.calls == [("Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet", "dataset", None)]
    assert corpus.rows == ["", " = A = \n", " text\n"] and corpus.joined() == "\n\n = A = \n\n\n text\n"
    assert corpus.stream and corpus.max_eval_windows is None
    p = corpus.provenance
    assert (p["kind"], p["repo_id"], p["commit"]) == ("hub", "Salesforce/wikitext", "c0ffee")
    assert p["sha256"] == corpus.sha256 == sha256_file(corpus.source)


def test_ptb_reads_the_parquet_conversion_of_ptb_text_only(empty_data, fake_hub):
    fake_hub.files["penn_treebank/test/0000.parquet"] = _parquet(["a b", "c"], column="sentence")
    corpus = load_corpus("ptb", "test")
    assert fake_hub.calls == [("ptb-text-only/ptb_text_only", "penn_treebank/test/0000.parquet", "dataset",
                               "refs/convert/parquet")]
    assert corpus.joined() == "a b c" and corpus.stream


def test_c4_calibration_reads_the_full_train_shard(empty_data, fake_hub):
    docs = ["x" * 30, "y" * 50, "z" * 5]
    fake_hub.files["en/c4-train.00000-of-01024.json.gz"] = _jsonl_gz(docs)
    corpus = load_corpus("c4", "train")
    assert fake_hub.calls[0][:2] == ("allenai/c4", "en/c4-train.00000-of-01024.json.gz")
    assert list(corpus.rows) == docs and not corpus.stream
    assert "full train shard 0" in corpus.provenance["note"]
    # the same document sampling as the local copy: random long-enough document, random offset
    local = calibration_segments(CharTokenizer(), api.Corpus("c4", "train", docs, "x", "mem"), 4, 10, seed=1)
    assert torch.equal(calibration_segments(CharTokenizer(), corpus, 4, 10, seed=1), local)


def test_c4_perplexity_follows_sparsegpts_rule(empty_data, fake_hub):
    """First 1100 validation documents joined with ' ', at most 256 windows of seqlen tokens."""
    docs = [f"{i:04d}" + "w" * 5 for i in range(1200)]
    fake_hub.files["en/c4-validation.00000-of-00008.json.gz"] = _jsonl_gz(docs)
    corpus = load_corpus("c4", "test")  # C4 has no test split: validation, as the papers evaluate
    assert corpus.split == "validation" and len(corpus.rows) == 1100 and corpus.joined().startswith("0000wwwww 0001")
    windows = corpus_windows(CharTokenizer(), corpus, seqlen=8)
    assert windows.shape == (256, 8)  # 1100 * 10 - 1 characters would make 1374 windows
    assert corpus_windows(CharTokenizer(), corpus, seqlen=8, max_windows=3).shape == (3, 8)


def test_offline_error_names_the_dataset_and_both_ways_out(empty_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError) as err:
        load_corpus("c4", "train")
    message = str(err.value)
    for needed in ("corpus c4/train", "allenai/c4", "en/c4-train.00000-of-01024.json.gz", "HF_HUB_OFFLINE",
                   "connect to the internet", "PRUNELAB_DATA", "prunelab data --download c4"):
        assert needed in message


def test_a_failed_download_becomes_the_same_clear_error(empty_data, fake_hub):
    def refuse(path):
        raise OSError("connection reset")
    fake_hub.files["wikitext-2-raw-v1/test-00000-of-00001.parquet"] = refuse
    with pytest.raises(DataUnavailableError, match="Salesforce/wikitext.*connection reset.*PRUNELAB_DATA"):
        load_corpus("wikitext2")


def test_prune_fails_before_loading_the_model_when_data_is_missing(empty_data, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded before the data is found")
    monkeypatch.setattr(api, "load_model", no_load)
    assert main(["prune", "--method", "wanda", "--sparsity", "0.5", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "allenai/c4" in capsys.readouterr().err
    # an evaluation corpus that cannot be had also fails before the load (for a method needing no calibration too)
    assert main(["prune", "--method", "magnitude", "--sparsity", "0.5", "--eval", "wikitext2",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "Salesforce/wikitext" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m", "--tasks", "piqa", "--quiet"]) == 2
    assert "baber/piqa" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tasks_fall_back_to_the_harness_datasets(empty_data, monkeypatch):
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return [{"goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": 0}]
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)
    data = load_task("piqa")
    assert calls == [("baber/piqa", None, "validation")]
    assert data.provenance["kind"] == "hub" and data.provenance["dataset"] == "baber/piqa"
    assert data.items[0].pairs()[0] == ("Question: Open a jar\nAnswer:", " twist")
    with pytest.raises(FileNotFoundError, match="piqa/valid.jsonl"):
        load_task("piqa", source="local")


def test_hf_specs_take_data_files_revision_and_the_known_corpus_rules(empty_data, monkeypatch):
    assert parse_hf_spec("allenai/c4?data_files=en/c4-train.00000-of-01024.json.gz&revision=abc") == (
        "allenai/c4", None, {"data_files": "en/c4-train.00000-of-01024.json.gz", "revision": "abc"})
    assert parse_hf_spec("my/set:cfg?joiner=%20%20&sampling=stream")[2] == {"joiner": "  ", "sampling": "stream"}
    with pytest.raises(ValueError, match="unknown option"):
        parse_hf_spec("my/set?colum=text")
    assert known_corpus_of("Salesforce/wikitext", "wikitext-2-raw-v1") == "wikitext2"
    assert known_corpus_of("wikitext", "wikitext-103-raw-v1") is None
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return [{"text": "doc one"}, {"text": "doc two"}]
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)
    c4 = load_corpus("hf:allenai/c4?data_files=en/c4-train.00000-of-01024.json.gz&revision=abc", "train")
    assert calls[-1] == ("allenai/c4", None, "train",
                         {"revision": "abc", "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}})
    assert c4.joined() == "doc one doc two" and not c4.stream  # C4's rules, not the generic ones
    wiki = load_corpus("hf:Salesforce/wikitext:wikitext-2-raw-v1", "test")
    assert wiki.joiner == "\n\n" and wiki.stream
    other = load_corpus("hf:my/set?sampling=stream&joiner=%7C", "test")
    assert other.joined() == "doc one|doc two" and other.stream and other.provenance["dataset"] == "my/set"


def test_prune_saves_before_evaluating_and_records_provenance(tmp_path, monkeypatch):
    from tiny_models import TEXT, save_tiny_folder

    model_dir = save_tiny_folder("llama", tmp_path / "tiny")
    corpus = tmp_path / "calib.txt"
    corpus.write_text(TEXT)

    def broken_eval(*a, **k):
        raise RuntimeError("evaluation broke")
    monkeypatch.setattr(api, "evaluate", broken_eval)
    out = tmp_path / "pruned"
    with pytest.raises(RuntimeError, match="evaluation broke"):
        api.prune(method="wanda", model=str(model_dir), sparsity=0.5, out=out, eval_data=str(corpus), progress=False,
                  calibration=api.CalibrationConfig(str(corpus), "train", 2, 16))
    record = json.loads((out / "prunelab.json").read_text())  # the finished prune is on disk
    assert record["summary"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    provenance = record["calibration"]["provenance"]
    assert provenance == {"kind": "local", "path": str(corpus.resolve()), "sha256": sha256_file(corpus)}
    monkeypatch.undo()
    result = api.prune(method="wanda", model=str(model_dir), sparsity=0.5, out=out, force=True, eval_data=str(corpus),
                       progress=False, calibration=api.CalibrationConfig(str(corpus), "train", 2, 16))
    saved = json.loads((Path(result.out) / "prunelab.json").read_text())
    assert saved["eval"][str(corpus)]["data_provenance"]["sha256"] == sha256_file(corpus)
    assert saved["eval"][str(corpus)]["ppl"] == result.record["eval"][str(corpus)]["ppl"]


def test_empty_calibration_file_is_rejected_before_the_model_load(tmp_path, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="has no text"):
        api.prune(method="wanda", sparsity=0.5, progress=False, calibration=api.CalibrationConfig(str(empty), "train", 2, 16))


def test_data_command_lists_where_each_input_comes_from(empty_data, monkeypatch, capsys):
    (empty_data / "piqa").mkdir()
    for name in ("valid.jsonl", "valid-labels.lst"):
        (empty_data / "piqa" / name).write_text("")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "--check"]) == 1
    out = capsys.readouterr()
    lines = {line.split()[0]: line for line in out.out.splitlines()[1:]}
    assert "local" in lines["piqa"] and "missing" in lines["c4/train"] and "allenai/c4" in lines["c4/train"]
    assert "c4/train" in out.err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)
    assert main(["data", "--check"]) == 0
    assert "downloaded on first use" in capsys.readouterr().out
