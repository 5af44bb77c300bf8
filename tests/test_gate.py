"""The check-algorithm gate: deliberately broken plug-ins are each rejected for the right reason, valid ones
pass, and nothing a plug-in does can crash or hang the gate."""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from prunelab.bench.store import ResultsStore
from prunelab.gate import CHECKS, check_algorithm, format_table
from prunelab.models.tiny import FAMILY_NAMES

PLUGINS = Path(__file__).parent / "plugins"
QUICK = ["llama/0.5", "opt/2:4"]  # one unstructured and one N:M case (the full set runs for a valid plug-in)

# plug-in -> (the check that must fail, words its reason must contain, words of the traceback's last line)
BROKEN = {
    "broken_syntax.py": ("imports", "SyntaxError", "SyntaxError"),
    "broken_exception.py": ("runs without error", "RuntimeError: boom from the plug-in", "RuntimeError: boom"),
    "broken_hang.py": ("finishes in time", "took longer than 5 s", ""),
    "broken_nan.py": ("weights finite", "non-finite", "non-finite values"),
    "broken_shape.py": ("shapes unchanged", "expected (32, 32)", "InvalidWeight"),
    "broken_sparsity.py": ("sparsity exact", "expected 512", ""),
    "broken_nm.py": ("N:M groups exact", "expected 2", ""),
    "broken_nondeterministic.py": ("same mask on a rerun", "same seed pruned other weights", ""),
    "broken_crash.py": ("runs without error", "died (exit code 3)", ""),
    "broken_touches.py": ("only prunable layers touched", "embed_tokens.weight changed", ""),
}


@pytest.fixture(scope="module")
def verdicts():
    jobs = {name: (str(PLUGINS / name), QUICK) for name in BROKEN}
    jobs["good_magnitude.py"] = (str(PLUGINS / "good_magnitude.py"), None)  # every family, both patterns
    jobs["good_activation.py:PluginActivation"] = (str(PLUGINS / "good_activation.py") + ":PluginActivation",
                                                   ["gpt2/0.5", "gemma2/2:4", "qwen3/2:4"])
    with ThreadPoolExecutor(4) as pool:  # independent worker processes
        futures = {name: pool.submit(_timed, spec, cases) for name, (spec, cases) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _timed(spec, cases):
    start = time.perf_counter()
    result = check_algorithm(spec, timeout=5.0 if "hang" in spec else 120.0, cases=cases)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("plugin", list(BROKEN))
def test_each_broken_plugin_is_rejected_for_the_right_reason(verdicts, plugin):
    result, seconds = verdicts[plugin]
    check, reason, last_line = BROKEN[plugin]
    assert not result["passed"]
    assert list(result["checks"]) == [c for c in CHECKS]
    assert result["checks"][check]["verdict"] == "fail", format_table(result)
    assert reason in result["checks"][check]["reason"]
    assert last_line in result["checks"][check]["traceback"]
    # the first failing check is the one this plug-in breaks (nothing before it is blamed)
    first = next(name for name, c in result["checks"].items() if c["verdict"] != "pass")
    assert first == check, format_table(result)
    if check == "imports":
        assert all(c["verdict"] == "not run" for name, c in result["checks"].items() if name != "imports")
    if plugin == "broken_hang.py":
        assert seconds < 60  # killed after 5 s (plus the worker's start-up), never waited out
    assert "REJECTED" in format_table(result)


def test_valid_plugins_pass_every_check(verdicts):
    result, _ = verdicts["good_magnitude.py"]
    assert result["passed"], format_table(result)
    assert len(result["cases"]) == 2 * len(FAMILY_NAMES)  # every family, 50% and 2:4
    assert all(c["verdict"] == "pass" for c in result["checks"].values())
    assert result["plugin"]["name"] == "plugin-magnitude" and len(result["sha256"]) == 64
    activation, _ = verdicts["good_activation.py:PluginActivation"]
    assert activation["passed"], format_table(activation)


def test_cli_exit_code_json_and_store(tmp_path, capsys):
    from prunelab.cli import main

    store = tmp_path / "lb.db"
    for plugin, code in (("good_magnitude.py", 0), ("broken_nan.py", 1)):
        out = tmp_path / f"{plugin}.json"
        assert main(["check-algorithm", str(PLUGINS / plugin), "--json", str(out), "--store", str(store),
                     "--author", "generated", "--families", "llama"]) == code
        assert "weights finite" in capsys.readouterr().out and json.loads(out.read_text())["passed"] == (code == 0)
    rows = {r["name"]: r for r in ResultsStore(store).algorithms()}
    assert rows["plugin-magnitude"]["gate"] == "passed" and rows["plugin-magnitude"]["author"] == "generated"
    assert rows["broken-nan"]["gate"] == "failed" and rows["broken-nan"]["reason"].startswith("weights finite: llama/0.5")
