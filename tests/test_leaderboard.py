"""The report's leaderboard: ranking, NA with reasons, human vs generated, gate failures (from a results store
filled through its public API, so every number in the expected table is known)."""
import math

from prunelab.bench.report import write_report
from prunelab.bench.store import ResultsStore

PPL = {  # method -> {level label: ppl, or a failure reason}
    "wanda": {0.5: 70.4, 0.6: 181.9, 0.7: 1248.6, "2:4": 213.5},
    "sparsegpt": {0.5: 64.8, 0.6: 142.6, 0.7: 409.0, "2:4": 127.0},
    "bias": {0.5: "NotApplicable: the layer has no bias", 0.6: "NotApplicable: the layer has no bias"},
    "my-plugin": {0.5: 90.0, 0.7: float("nan")},
}


def fill(path):
    store = ResultsStore(path)
    for method, cells in PPL.items():
        for level, value in cells.items():
            pattern, lv = ("2:4", 0.5) if level == "2:4" else ("unstructured", level)
            key = f"{method}-{level}"
            identity = {"eval": {"protocol": {"split": "test", "task_limit": 50}, "seqlen": 512}}
            store.claim(key, model="m", method=method, pattern=pattern, level=lv, identity=identity)
            if isinstance(value, str):
                store.finish(key, "failed", reason=value)
                continue
            metrics = {"perplexity": {"wikitext2": {"ppl": value, "windows": 128}},
                       "tasks": {"piqa": {"acc": 0.6}, "boolq": {"acc": 0.5}},
                       "size": {"sparsity": lv, "nonzero_params": 1e6, "dense_checkpoint_bytes": 1,
                                "bitmask_checkpoint_bytes": 1}}
            record = {"prune_seconds": 10.0 + lv, "eval_seconds": 1.0, "peak_rss_bytes": 2**30 * (1 + lv)}
            store.finish(key, "done" if math.isfinite(value) else "failed", metrics=metrics, record=record,
                         reason=None if math.isfinite(value) else "perplexity on wikitext2 is not finite (nan)")
    store.note_algorithm("my-plugin", author="generated", source="p.py", sha256="0" * 64, gate="passed",
                         reason=None, result={})
    store.note_algorithm("broken", author="generated", source="b.py", sha256=None, gate="failed",
                         reason="weights finite: llama/0.5: model.layers.0.q_proj has NaN or inf", result={})
    store.close()


def test_leaderboard_ranks_marks_na_and_lists_gate_failures(tmp_path):
    fill(tmp_path / "lb.db")
    text = write_report(tmp_path / "lb.db", tmp_path / "out")["markdown"].read_text()
    board = text.split("## Leaderboard: m")[1].split("\n## ")[0]
    lines = [ln for ln in board.splitlines() if ln.startswith("| ") and not ln.startswith("| #")]
    assert [ln.split(" | ")[1] for ln in lines] == ["sparsegpt", "wanda", "my-plugin", "bias"]
    assert lines[0].startswith("| 1 | sparsegpt | human | **64.800 (1)** | **142.600 (1)** | **409.000 (1)** | **127.000 (1)**")
    assert "| 2 | wanda | human | 70.400 (2) |" in lines[1]
    assert "| 3 | my-plugin | generated | 90.000 (3) | - | NA [" in lines[2]
    assert "| 4 | bias | human | NA [" in lines[3]
    assert "55.00" in lines[0]  # mean zero-shot accuracy of piqa 60% and boolq 50%
    assert "first 50 items of each task" in board
    notes = text.split("## Notes")[1]
    assert "bias at 0.50: NotApplicable: the layer has no bias" in notes
    assert "my-plugin at 0.70: perplexity on wikitext2 is not finite (nan)" in notes
    human_vs = text.split("## Human vs generated: m")[1].split("\n## ")[0]
    assert "| 0.50 | sparsegpt: 64.800 | my-plugin: 90.000 |" in human_vs
    assert "| 0.70 | sparsegpt: 409.000 | - |" in human_vs
    gate = text.split("## Gate failures (check-algorithm)")[1].split("\n## ")[0]
    assert "| broken | generated | weights finite: llama/0.5: model.layers.0.q_proj has NaN or inf |" in gate
    assert "my-plugin" not in gate


def test_sweep_with_a_plugin_and_an_allocation_reaches_the_leaderboard(tmp_path, capsys):
    """End to end on a tiny model folder: sweep --plugin, a +owl method, the gate's verdict, the report."""
    from pathlib import Path

    from prunelab.cli import main
    from tiny_models import TEXT, save_tiny_folder

    save_tiny_folder("llama", tmp_path / "model")
    (tmp_path / "corpus.txt").write_text(TEXT)
    store = tmp_path / "lb.db"
    plugin = Path(__file__).parent / "plugins" / "good_magnitude.py"
    assert main(["sweep", "--models", str(tmp_path / "model"), "--plugin", str(plugin),
                 "--methods", "plugin-magnitude,wanda,wanda+owl", "--levels", "0.5", "--patterns", "unstructured",
                 "--calib", str(tmp_path / "corpus.txt"), "--calib-samples", "4", "--calib-seqlen", "32",
                 "--eval", str(tmp_path / "corpus.txt"), "--eval-seqlen", "32", "--device", "cpu",
                 "--store", str(store), "--quiet"]) == 0
    s = ResultsStore(store)
    rows = {r["method"]: r for r in s.rows("done")}
    assert set(rows) == {"dense", "plugin-magnitude", "wanda", "wanda+owl"}
    assert rows["plugin-magnitude"]["identity"]["algorithm_source"]["class"] == "PluginMagnitude"
    allocation = rows["wanda+owl"]["record"]["allocation"]
    assert allocation["kind"] == "owl" and len(allocation["block_sparsity"]) == 2
    assert rows["wanda+owl"]["metrics"]["size"]["sparsity"] == rows["wanda"]["metrics"]["size"]["sparsity"]
    s.note_algorithm("plugin-magnitude", author="generated", source=str(plugin), sha256=None, gate="passed",
                     reason=None, result=None)
    s.close()
    text = write_report(store, tmp_path / "out")["markdown"].read_text()
    board = text.split("## Leaderboard: ")[1].split("\n## ")[0]
    assert "| plugin-magnitude | generated |" in board and "| wanda+owl | human |" in board


def test_carried_cells_fill_only_what_the_store_lacks_and_are_marked(tmp_path):
    fill(tmp_path / "lb.db")
    carried = [  # a cell the store has (ignored), one it lacks, and a method it has not at all (structured)
        {"model": "m", "method": "wanda", "pattern": "unstructured", "level": 0.5, "status": "done",
         "metrics": {"perplexity": {"wikitext2": {"ppl": 1.0}}}, "record": {}, "carried": "2026-12-01 09:00"},
        {"model": "m", "method": "bias", "pattern": "unstructured", "level": 0.7, "status": "failed",
         "reason": "NotApplicable: carried reason", "metrics": None, "record": {}, "carried": "2026-12-01 09:00"},
        {"model": "m", "method": "struct-flap", "pattern": "unstructured", "level": 0.6, "status": "done",
         "metrics": {"perplexity": {"wikitext2": {"ppl": 100.0}}}, "mean_acc": 26.25, "carried": "2026-12-01 09:00",
         "record": {"prune_seconds": 280.0, "peak_rss_bytes": 1500 * 2**20, "config": {"structure": "channels,heads"}}},
    ]
    text = write_report(tmp_path / "lb.db", tmp_path / "out", carried=carried)["markdown"].read_text()
    board = text.split("## Leaderboard: m")[1].split("\n## ")[0]
    lines = {ln.split(" | ")[1]: ln for ln in board.splitlines() if ln.startswith("| ") and not ln.startswith("| #")}
    assert "| wanda | human | 70.400 (2) |" in lines["wanda"]  # the store's own run wins over a carried one
    flap = lines["struct-flap"].split(" | ")
    assert flap[2] == "human" and flap[4] == "**100.000 (1) †**" and "26.25" in flap and flap[-2:] == ["280.0", "1500 |"]
    assert "bias at 0.70: NotApplicable: carried reason" in text.split("## Notes")[1]
    assert "† measured with the same protocol into an earlier results store (rendered 2026-12-01 09:00)" in board
    plain = write_report(tmp_path / "lb.db", tmp_path / "out2")["markdown"].read_text()
    assert "†" not in plain and "struct-flap" not in plain
