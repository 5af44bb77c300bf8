"""End to end through the CLI and API on tiny model folders: prune, save, reload, evaluate."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunelab
from prunelab.cli import main
from prunelab.models import ModelAdapter
from tiny_models import FAMILY_NAMES, TEXT, save_tiny_folder


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    return path


def folder_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def zero_fraction(model) -> float:
    adapter = ModelAdapter(model)
    ws = [adapter.get_weight(l) for _, l in adapter.named_prunable_layers()]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_prunes_saves_reloads_and_evaluates(family, tmp_path, corpus_file):
    src = save_tiny_folder(family, tmp_path / "src")
    before = folder_digest(src)
    result = prunelab.prune(model=str(src), method="sparsegpt", sparsity=0.5, device="cpu",
                            calibration=prunelab.CalibrationConfig(str(corpus_file), "train", 4, 32, 0),
                            out=tmp_path / "out", eval_data=str(corpus_file), eval_seqlen=32, progress=False)
    assert folder_digest(src) == before  # the input model is never modified
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "prunelab.json").read_text())
    assert zero_fraction(reloaded) == pytest.approx(record["summary"]["sparsity"])
    assert record["summary"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert record["eval"][str(corpus_file)]["finite"]
    for key in ("config", "versions", "calibration", "layers", "prune_seconds", "peak_rss_bytes", "host"):
        assert key in record
    assert record["calibration"]["data_sha256"] == hashlib.sha256(corpus_file.read_bytes()).hexdigest()
    assert result.record["config"]["method"] == "sparsegpt"


def test_cli_prune_then_eval(tmp_path, corpus_file, capsys):
    src = save_tiny_folder("llama", tmp_path / "src")
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(src), "--method", "wanda", "--pattern", "2:4", "--calib", str(corpus_file),
            "--calib-samples", "4", "--calib-seqlen", "32", "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sparsity"] == pytest.approx(0.5)
    record = json.loads((out / "prunelab.json").read_text())
    assert record["config"]["pattern_resolved"] == {"kind": "n:m", "sparsity": 0.5, "n": 2, "m": 4, "scope": "row"}
    assert record["calibration"]["samples"] == 4 and record["calibration"]["seed"] == 0

    # An existing output is not overwritten without --force.
    stamp = (out / "prunelab.json").read_text()
    assert main(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "prunelab.json").read_text() == stamp
    assert main(args + ["--force"]) == 0
    capsys.readouterr()

    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--data", str(corpus_file), "--seqlen", "32", "--max-windows", "3",
                 "--json", str(report), "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert {"ppl", "seqlen", "windows", "tokens"} <= set(result)
    assert (result["seqlen"], result["windows"], result["tokens"]) == (32, 3, 3 * 31)
    assert result["measured_sparsity"] == pytest.approx(result["recorded_sparsity"])


@pytest.mark.parametrize("bad,message", [
    (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
    (["--sparsity", "0.5", "--pattern", "4:2"], "N:M pattern needs integers 0 < N < M"),
    (["--sparsity", "0.5", "--opt", "blocksize=0"], "blocksize must be >= 1"),
    (["--pattern", "unstructured"], "--sparsity is required"),
    (["--sparsity", "0.5", "--scope", "global"], "supports scopes"),
])
def test_bad_arguments_fail_before_any_work(bad, message, tmp_path, capsys):
    rc = main(["prune", "--model", str(tmp_path / "does-not-matter"), "--method", "sparsegpt", *bad,
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_model_and_corpus_say_what_to_do(tmp_path, capsys, monkeypatch):
    assert main(["eval", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "neither an embedded name" in capsys.readouterr().err
    src = save_tiny_folder("llama", tmp_path / "src")
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub fallback must not be tried for real in a test
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["eval", str(src), "--data", "wikitext2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corpus wikitext2/test" in err and "Salesforce/wikitext" in err and "PRUNELAB_DATA" in err


def test_compare_layers_reports_each_method_and_its_optimum(tmp_path, corpus_file):
    src = save_tiny_folder("llama", tmp_path / "src")
    methods = "magnitude,wanda,sparsegpt,alps,magnitude+refit,wanda+dsnot,mama"
    assert main(["compare-layers", "--model", str(src), "--methods", methods, "--sparsity", "0.7",
                 "--calib", str(corpus_file), "--calib-samples", "4", "--calib-seqlen", "32",
                 "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "cmp" / "layers.json").read_text())["rows"]
    assert len(rows) == 2 * 7 * 7  # blocks x layers x methods
    for r in rows:  # the optimum is the lower of PCG's answer and the best candidate on the row's support, and
        # every error is evaluated the same way (float64), so no candidate can beat its own support's optimum
        assert r["optimum_error"] <= r["error"], r
    by = {(r["block"], r["layer"], r["method"]): r for r in rows}
    for r in rows:
        if r["method"] == "magnitude+refit":
            assert r["error"] == pytest.approx(r["optimum_error"], rel=1e-3, abs=1e-6)
            assert r["optimum_error"] == pytest.approx(by[(r["block"], r["layer"], "magnitude")]["optimum_error"],
                                                       rel=1e-6, abs=1e-9)
        if r["method"] == "alps":
            assert r["error"] <= r["optimum_error"] * 1.01 + 1e-6
    assert "| alps |" in (tmp_path / "cmp" / "layers.md").read_text()

    # interrupted after block 0 (the last line cut short): a rerun solves block 1 only and gives the same rows
    partial = tmp_path / "cmp" / "layers.partial.jsonl"
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + len(rows)
    partial.write_text("\n".join(lines[:1 + 49]) + "\n" + lines[50][:20])
    assert main(["compare-layers", "--model", str(src), "--methods", methods, "--sparsity", "0.7",
                 "--calib", str(corpus_file), "--calib-samples", "4", "--calib-seqlen", "32",
                 "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    again = json.loads((tmp_path / "cmp" / "layers.json").read_text())["rows"]
    assert [(r["block"], r["layer"], r["method"], r["error"]) for r in again] == \
        [(r["block"], r["layer"], r["method"], r["error"]) for r in rows]
    assert [json.loads(line) for line in partial.read_text().splitlines()[1:]] == again
