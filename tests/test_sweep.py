"""Sweeps, the results store and reports, on a tiny model folder and a local corpus."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import prunelab
from prunelab.algorithms.base import PruningAlgorithm, register
from prunelab.bench import EvalProtocol, ResultsStore, SweepConfig, run_key, run_sweep
from prunelab.bench.report import write_report
from prunelab.cli import main
from tiny_models import TEXT, save_tiny_folder

LEVELS = (0.3, 0.6, 0.9)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    save_tiny_folder("llama", root / "model")
    (root / "corpus.txt").write_text(TEXT)
    return root


def sweep_config(workdir, methods=("magnitude", "wanda", "sparsegpt"), levels=LEVELS, patterns=("unstructured", "2:4")):
    return SweepConfig(methods=methods, levels=levels, patterns=patterns, models=(str(workdir / "model"),),
                       calibrations=(prunelab.CalibrationConfig(str(workdir / "corpus.txt"), "train", 4, 32, 0),),
                       evaluation=EvalProtocol(perplexity=(str(workdir / "corpus.txt"),), seqlen=32), device="cpu")


def done_ppl(store_path) -> dict:
    store = ResultsStore(store_path)
    try:
        return {(r["method"], r["pattern"], r["level"]): next(iter(r["metrics"]["perplexity"].values()))["ppl"]
                for r in store.rows("done")}
    finally:
        store.close()


def test_run_key_is_order_independent_and_sensitive():
    assert run_key({"a": 1, "b": {"c": 2, "d": 3}}) == run_key({"b": {"d": 3, "c": 2}, "a": 1})
    assert run_key({"a": 1}) != run_key({"a": 2})


def test_store_claims_and_transitions(tmp_path):
    store = ResultsStore(tmp_path / "s.db")
    fields = dict(model="m", method="wanda", pattern="unstructured", level=0.5, identity={"x": 1})
    assert store.claim("k", **fields) is None
    assert store.get("k")["status"] == "running" and store.get("k")["attempts"] == 1
    store.finish("k", "failed", reason="boom")
    assert store.claim("k", **fields) == "failed"  # failed runs are kept unless asked
    assert store.claim("k", **fields, retry_failed=True) is None
    store.finish("k", "done", metrics={"ppl": float("nan")})
    assert store.claim("k", **fields) == "done"
    row = store.get("k")
    assert row["attempts"] == 2 and row["metrics"] == {"ppl": "nan"} and row["reason"] is None
    with pytest.raises(ValueError):
        store.finish("k", "bogus")


def test_store_export_import_round_trip_and_merge(tmp_path):
    from prunelab.cli import main

    src = ResultsStore(tmp_path / "a.db")
    fields = dict(model="m", pattern="unstructured", level=0.5)
    for key, method, status in (("k1", "wanda", "done"), ("k2", "magnitude", "failed"), ("k3", "alps", "running")):
        src.claim(key, method=method, identity={"method": method}, **fields)
        if status != "running":
            src.finish(key, status, metrics={"perplexity": {"wikitext2": {"ppl": float("inf")}}} if status == "done"
                       else None, layers=[{"name": "l0", "error": 0.25}], record={"prune_seconds": 1.5},
                       reason=None if status == "done" else "boom")
    src.note_algorithm("gen-x", author="generated", source="x.py", sha256="ab", gate="passed", reason=None,
                       result={"checks": [1, 2]})
    assert src.export_jsonl(tmp_path / "runs.jsonl") == 3  # the running row is not a result
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(x)["run"]["key"] for x in lines[:2]] == ["k1", "k2"] and "algorithm" in json.loads(lines[2])

    dst = ResultsStore(tmp_path / "b.db")
    dst.claim("k1", method="wanda", identity={"method": "wanda"}, **fields)  # running here: the file's done row wins
    dst.claim("k2", method="magnitude", identity={"method": "magnitude"}, **fields)
    dst.finish("k2", "done", metrics={"ppl": 3.0})  # done here: kept
    assert dst.import_jsonl(tmp_path / "runs.jsonl") == {"runs": 1, "algorithms": 1, "kept": 1}
    a, b = src.get("k1"), dst.get("k1")
    for column in ("identity", "status", "metrics", "layers", "record", "model", "method", "level", "finished"):
        assert a[column] == b[column], column
    assert b["metrics"]["perplexity"]["wikitext2"]["ppl"] == "inf" and dst.get("k2")["metrics"] == {"ppl": 3.0}
    assert dst.algorithms()[0]["result"] == {"checks": [1, 2]}
    assert dst.import_jsonl(tmp_path / "runs.jsonl") == {"runs": 0, "algorithms": 0, "kept": 3}  # idempotent
    src.close()
    dst.close()

    (tmp_path / "bad.jsonl").write_text('{"run": {"key": "k9", "status": "running"}}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        ResultsStore(tmp_path / "c.db").import_jsonl(tmp_path / "bad.jsonl")
    # the command: export then import into a fresh store gives the same finished rows
    assert main(["store", "export", str(tmp_path / "cli.jsonl"), "--store", str(tmp_path / "a.db")]) == 0
    assert main(["store", "import", str(tmp_path / "cli.jsonl"), "--store", str(tmp_path / "d.db")]) == 0
    assert sorted(r["key"] for r in ResultsStore(tmp_path / "d.db").rows()) == ["k1", "k2"]
    assert main(["store", "export", str(tmp_path / "x.jsonl"), "--store", str(tmp_path / "none.db")]) != 0


def test_running_row_of_a_live_process_is_left_alone_and_of_a_dead_one_redone(tmp_path):
    db = tmp_path / "s.db"
    fields = dict(model="m", method="wanda", pattern="unstructured", level=0.5, identity={})
    code = ("import sys, time; from prunelab.bench import ResultsStore; s = ResultsStore(sys.argv[1]); "
            "s.claim('k', model='m', method='wanda', pattern='unstructured', level=0.5, identity={}); "
            "print('claimed', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "claimed"
        store = ResultsStore(db)
        assert store.claim("k", **fields) == "busy"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert store.claim("k", **fields) is None  # its owner died: redo it
    assert store.get("k")["attempts"] == 2


def test_sweep_equals_independent_runs_and_resumes(workdir, tmp_path):
    config = sweep_config(workdir, methods=("magnitude", "sparsegpt"), levels=(0.5,), patterns=("unstructured",))
    store = ResultsStore(tmp_path / "s.db")
    counts = run_sweep(config, store, log=lambda *_: None)
    assert (counts["done"], counts["failed"]) == (3, 0)  # dense + 2 runs
    for method in ("magnitude", "sparsegpt"):
        result = prunelab.prune(model=str(workdir / "model"), method=method, sparsity=0.5, device="cpu",
                                calibration=config.calibrations[0], progress=False)
        ppl = prunelab.evaluate(result.model, tokenizer=result.tokenizer, data=str(workdir / "corpus.txt"),
                                seqlen=32, batch_size=config.evaluation.batch_size, progress=False)["ppl"]
        row = next(r for r in store.rows("done") if r["method"] == method)
        assert next(iter(row["metrics"]["perplexity"].values()))["ppl"] == ppl  # exactly, not approximately
        assert row["metrics"]["size"]["sparsity"] == pytest.approx(0.5)
        assert len(row["layers"]) == 14
    dense = next(r for r in store.rows("done") if r["method"] == "dense")
    reference = prunelab.evaluate(str(workdir / "model"), data=str(workdir / "corpus.txt"), seqlen=32,
                                  batch_size=config.evaluation.batch_size, progress=False)  # the same computation
    assert next(iter(dense["metrics"]["perplexity"].values()))["ppl"] == reference["ppl"]
    # a second pass does nothing; a bigger sweep only runs what is new
    again = run_sweep(config, store, log=lambda *_: None)
    assert (again["done"], again["skipped"]) == (0, 3)
    bigger = sweep_config(workdir, methods=("magnitude", "sparsegpt"), levels=(0.5, 0.7), patterns=("unstructured",))
    more = run_sweep(bigger, store, log=lambda *_: None)
    assert (more["done"], more["skipped"]) == (2, 3)


@register
@dataclass
class _Exploding(PruningAlgorithm):
    """Test-only: fails at high sparsity, and gives weights whose outputs overflow at 2:4."""
    name = "test-exploding"
    needs = frozenset()

    def prune(self, weight, stats, pattern):
        if pattern.is_nm:
            return torch.full_like(weight, 3e38)  # finite, but the forward overflows to NaN
        if pattern.sparsity > 0.8:
            raise RuntimeError("too sparse for this test method")
        return weight


def test_failures_are_recorded_and_the_sweep_goes_on(workdir, tmp_path):
    config = sweep_config(workdir, methods=("test-exploding", "magnitude"), levels=(0.5, 0.9))
    store = ResultsStore(tmp_path / "s.db")
    lines = []
    counts = run_sweep(config, store, log=lines.append)
    assert counts["done"] == 1 + 1 + 3 and counts["failed"] == 2
    failed = {(r["method"], r["pattern"], r["level"]): r["reason"] for r in store.rows("failed")}
    assert "too sparse for this test method" in failed[("test-exploding", "unstructured", 0.9)]
    assert "not finite" in failed[("test-exploding", "2:4", 0.5)]
    assert len(lines) == 7 and "ETA" in lines[-1]
    write_report(tmp_path / "s.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| Pruned level | test-exploding | magnitude |" in md
    assert "NA [1]" in md and "too sparse for this test method" in md
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Made by" not in md  # filled through the API, not the CLI
    assert page.count("<svg") == 3 and "title='test-exploding at 0.90: RuntimeError: too sparse" in page


def _sweep_cmd(workdir, store):
    return [sys.executable, "-m", "prunelab.cli", "sweep", "--models", str(workdir / "model"),
            "--methods", "magnitude,wanda,sparsegpt", "--levels", ",".join(map(str, LEVELS)),
            "--patterns", "unstructured,2:4", "--calib", str(workdir / "corpus.txt"), "--calib-samples", "4",
            "--calib-seqlen", "32", "--eval", str(workdir / "corpus.txt"), "--eval-seqlen", "32",
            "--device", "cpu", "--store", str(store), "--quiet"]


def test_kill_9_twice_then_rerun_gives_the_uninterrupted_results(workdir, tmp_path):
    reference = tmp_path / "reference.db"
    subprocess.run(_sweep_cmd(workdir, reference), check=True, capture_output=True)
    expected = done_ppl(reference)
    assert len(expected) == 1 + 3 * (len(LEVELS) + 1)

    store = tmp_path / "killed.db"
    rng = random.Random(7)
    for _ in range(2):
        before = len(done_ppl(store)) if store.exists() else 0
        child = subprocess.Popen(_sweep_cmd(workdir, store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:  # wait for progress, then kill at a random moment
            if store.exists() and len(done_ppl(store)) > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(done_ppl(store)) < len(expected), "the sweep finished before it could be killed"
    subprocess.run(_sweep_cmd(workdir, store), check=True, capture_output=True)
    with sqlite3.connect(store) as db:
        statuses = db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
    assert statuses == [("done", len(expected))]
    assert done_ppl(store) == expected


def test_cli_dry_run_and_config_file(workdir, tmp_path, capsys):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"methods: [magnitude, wanda]\nlevels: [0.5]\npatterns: [unstructured, '4:8']\nmodels: ['{workdir / 'model'}']\n"
        f"calibration: {{corpus: '{workdir / 'corpus.txt'}', samples: 4, seqlen: 32}}\n"
        f"eval: {{perplexity: ['{workdir / 'corpus.txt'}'], seqlen: 32}}\nstore: '{tmp_path / 's.db'}'\n")
    assert main(["sweep", "--config", str(sweep_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and out.count("to do") == 4
    assert main(["sweep", "--config", str(sweep_file), "--methods", "magnitude", "--quiet", "--device", "cpu"]) == 0
    assert main(["sweep", "--config", str(sweep_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("done") >= 2 and out.count("to do") == 2
    assert main(["report", "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "rep")]) == 0
    assert f"prunelab sweep --config {sweep_file} --methods magnitude" in (tmp_path / "rep" / "report.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [magnitude]\nlevles: [0.5]\nstore: x.db\n")
    assert main(["sweep", "--config", str(bad)]) == 2
    assert "levles" in capsys.readouterr().err
    assert main(["sweep", "--methods", "nosuch", "--store", str(tmp_path / "t.db")]) == 2


def test_sweep_with_tasks_and_samples_reaches_the_report(workdir, tmp_path):
    from prunelab.data.corpora import data_dir

    if not (data_dir() / "piqa" / "valid.jsonl").is_file():
        pytest.skip("the piqa copy is not in the data directory")
    import json as _json
    long_model = tmp_path / "model"  # the tiny tokenizer spends many tokens on piqa's text: allow longer inputs
    save_tiny_folder("llama", long_model)
    cfg = _json.loads((long_model / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (long_model / "config.json").write_text(_json.dumps(cfg))
    config = dataclasses_replace(sweep_config(workdir, methods=("magnitude",), levels=(0.5,), patterns=("unstructured",)),
                                 models=(str(long_model),), evaluation=EvalProtocol(perplexity=(str(workdir / "corpus.txt"),), seqlen=32,
                                                         tasks=("piqa",), task_limit=4, generate=True))
    store = ResultsStore(tmp_path / "s.db")
    assert run_sweep(config, store, log=lambda *_: None)["done"] == 2
    row = next(r for r in store.rows("done") if r["method"] == "magnitude")
    assert 0.0 <= row["metrics"]["tasks"]["piqa"]["acc"] <= 1.0 and row["metrics"]["samples"]
    store.close()
    md = write_report(tmp_path / "s.db", tmp_path / "report")["markdown"].read_text()
    assert "## Zero-shot accuracy (%)" in md and "| method | level | piqa |" in md
    assert "## Generated text: magnitude" in md


def dataclasses_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)


def test_identity_follows_the_weights_the_device_and_the_dtype(workdir, tmp_path):
    from safetensors.torch import load_file, save_file

    from prunelab.bench.sweep import plan_sweep
    from prunelab.config import devices_checked_where_runs_execute

    model = tmp_path / "model"
    save_tiny_folder("llama", model)
    config = dataclasses_replace(sweep_config(workdir, methods=("wanda",), levels=(0.5,), patterns=("unstructured",)),
                                 models=(str(model),))
    keys = lambda cfg: [t.key for t, _ in plan_sweep(cfg)]  # noqa: E731
    before = keys(config)
    weights = load_file(model / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] += 1.0  # same config.json, other weights
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    changed = keys(config)
    assert all(a != b for a, b in zip(before, changed))  # the dense row and the run: both are new
    assert keys(dataclasses_replace(config, dtype="bfloat16")) != changed
    with devices_checked_where_runs_execute():  # a GPU run planned on a machine without one
        on_gpu = keys(dataclasses_replace(config, device="cuda"))
    assert on_gpu[0] != changed[0] and on_gpu[1] != changed[1]


def test_identity_does_not_depend_on_where_the_calibration_data_was_read_from(workdir, monkeypatch):
    """Two hosts reading the same corpus from different folders must share run keys (the checksums decide)."""
    import prunelab.data as data
    from prunelab.bench.sweep import plan_sweep

    config = sweep_config(workdir, methods=("wanda",), levels=(0.5,), patterns=("unstructured",))
    keys = lambda: [t.key for t, _ in plan_sweep(config)]  # noqa: E731
    before = keys()
    real = data.load_corpus
    monkeypatch.setattr(data, "load_corpus",
                        lambda *a, **k: dataclasses_replace(real(*a, **k), source="/another/host/corpus.txt"))
    assert keys() == before


def test_workers_are_told_apart_by_more_than_pid_and_host(tmp_path):
    import socket

    from prunelab.bench.store import STALE_SECONDS, worker_alive, worker_identity

    me = worker_identity()
    host, boot, pid, ticks, token = me.split("/")
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert worker_alive(me, None)
    assert not worker_alive(f"{host}/{boot}/{pid}/{int(ticks) + 1}/{token}", None)  # a recycled pid
    other = f"elsewhere/{boot}/{pid}/{ticks}/{token}"  # the same pid on another machine: only its heartbeat counts
    assert worker_alive(other, time.time()) and not worker_alive(other, time.time() - STALE_SECONDS - 1)
    store = ResultsStore(tmp_path / "s.db")
    fields = dict(model="m", method="wanda", pattern="unstructured", level=0.5, identity={})
    assert store.claim("k", **fields) is None
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE runs SET worker=?, heartbeat=? WHERE key='k'", (other, time.time()))
    assert store.claim("k", **fields) == "busy"  # running on another host, heartbeat fresh
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE runs SET heartbeat=? WHERE key='k'", (time.time() - STALE_SECONDS - 5,))
    assert store.claim("k", **fields) is None  # its heartbeat stopped: taken over
    assert store.get("k")["worker"] == store.worker


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE runs (key TEXT PRIMARY KEY, model TEXT NOT NULL, method TEXT NOT NULL, "
                     "pattern TEXT NOT NULL, level REAL, identity TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, "
                     "metrics TEXT, layers TEXT, record TEXT, attempts INTEGER NOT NULL DEFAULT 0, pid INTEGER, "
                     "host TEXT, started TEXT, finished TEXT);"
                     "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema', '1');"
                     "INSERT INTO runs (key, model, method, pattern, level, identity, status, attempts) "
                     "VALUES ('k', 'm', 'wanda', 'unstructured', 0.5, '{}', 'done', 1);")
    db.commit()
    db.close()
    store = ResultsStore(tmp_path / "old.db")
    assert store.get("k")["status"] == "done" and "worker" in store.get("k")
    assert store.claim("k", model="m", method="wanda", pattern="unstructured", level=0.5, identity={}) == "done"


def test_report_shows_every_seed_and_save_dir_names_say_which_run(workdir, tmp_path):
    config = dataclasses_replace(sweep_config(workdir, methods=("wanda",), levels=(0.5,), patterns=("unstructured",)),
                                 calibrations=tuple(prunelab.CalibrationConfig(str(workdir / "corpus.txt"), "train", 4,
                                                                               32, seed) for seed in (0, 1, 2)),
                                 save_dir=str(tmp_path / "saved"))
    store = ResultsStore(tmp_path / "s.db")
    assert run_sweep(config, store, log=lambda *_: None)["done"] == 4
    ppl = sorted(next(iter(r["metrics"]["perplexity"].values()))["ppl"] for r in store.rows("done")
                 if r["method"] == "wanda")
    store.close()
    assert len(set(ppl)) == 3  # three seeds, three different calibration sets
    mean = sum(ppl) / 3
    spread = (sum((p - mean) ** 2 for p in ppl) / 2) ** 0.5
    md = write_report(tmp_path / "s.db", tmp_path / "report")["markdown"].read_text()
    assert f"{mean:.3f} ± {spread:.3f} (n=3)" in md
    assert all(f"0.50 (seed {s})" in md for s in (0, 1, 2))
    names = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert names == [f"model-wanda-unstructured-0.5-seed{s}" for s in (0, 1, 2)]
def test_sweep_with_speed_stores_the_figures_and_the_report_shows_them(workdir, tmp_path):
    from prunelab.eval.speed import SPEED_KEYS, SpeedSettings

    speed = SpeedSettings(prompt_len=16, new_tokens=4, repeats=1, threads=1)
    config = dataclasses_replace(sweep_config(workdir, methods=("magnitude",), levels=(0.5,), patterns=("unstructured",)),
                                 speed=speed)
    store = ResultsStore(tmp_path / "s.db")
    assert run_sweep(config, store, log=lambda *_: None)["done"] == 2
    rows = {r["method"]: r for r in store.rows("done")}
    store.close()
    for row in rows.values():
        assert set(SPEED_KEYS) <= set(row["metrics"]["speed"]) and row["identity"]["speed"] == speed.to_dict()
        assert row["metrics"]["speed"]["threads"] == 1
    dense, pruned = rows["dense"]["metrics"]["speed"], rows["magnitude"]["metrics"]["speed"]
    assert pruned["nonzero_params"] < dense["nonzero_params"] and pruned["params"] == dense["params"]
    files = write_report(tmp_path / "s.db", tmp_path / "report")
    md = files["markdown"].read_text()
    assert "## Speed" in md and "decode vs dense (measured / ideal)" in md
    ideal = dense["costs"]["decode_bytes_per_token"] / pruned["costs"]["decode_bytes_per_token"]
    assert f"x / {ideal:.3f}x" in md
    assert "quality_vs_speed" in md and "<svg" in files["html"].read_text()


def test_sweep_flags_reach_the_evaluation_protocol():
    from prunelab.bench.sweep import sweep_config_from_dict
    from prunelab.cli import _sweep_settings, build_parser

    args = build_parser().parse_args(["sweep", "--methods", "wanda", "--levels", "0.5", "--eval-windows", "4",
                                      "--eval-batch-size", "8", "--store", "s.db"])
    protocol = sweep_config_from_dict(_sweep_settings(args)).evaluation
    assert (protocol.windows, protocol.batch_size) == (4, 8)
    default = build_parser().parse_args(["sweep", "--methods", "wanda", "--store", "s.db"])
    assert sweep_config_from_dict(_sweep_settings(default)).evaluation.batch_size == 1  # identities stay as they were


def test_report_reads_the_seed_of_rows_filed_by_scripts_with_other_identities():
    """benchmarks/zoo.py files structured runs whose identity lists the calibration flags: the report must not
    fail on them (it did: 'list' object has no attribute 'get'), and they do not count as another seed."""
    from prunelab.bench.report import _seed

    assert _seed({"identity": {"calibration": {"corpus": "c4", "seed": 3}}}) == 3
    assert _seed({"identity": {"calibration": ["--calib", "c4", "--seeds", "0"]}}) is None
    assert _seed({"identity": {"calibration": None}}) is None and _seed({}) is None
