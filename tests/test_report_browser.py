"""The HTML report in a real headless Chromium: tables and plots are in the rendered DOM, no console errors."""
import os
import re
import shutil
import subprocess

import pytest

import prunelab
from prunelab.bench import EvalProtocol, ResultsStore, SweepConfig, run_sweep
from prunelab.bench.report import write_report
from tiny_models import TEXT, save_tiny_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(path):
    """(DOM after load, console messages) of a local page in headless Chromium."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", path.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_console_errors_are_detected(tmp_path):
    """The check below can fail: a page with a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>console.error('bad'); nosuch();</script></body></html>")
    _, console = render(page)
    assert any("Uncaught ReferenceError" in line for line in console)


def test_report_renders_in_chromium(tmp_path):
    save_tiny_folder("llama", tmp_path / "model")
    (tmp_path / "corpus.txt").write_text(TEXT)
    config = SweepConfig(methods=("magnitude", "wanda"), levels=(0.5, 0.9), patterns=("unstructured", "2:4"),
                         models=(str(tmp_path / "model"),),
                         calibrations=(prunelab.CalibrationConfig(str(tmp_path / "corpus.txt"), "train", 4, 32, 0),),
                         evaluation=EvalProtocol(perplexity=(str(tmp_path / "corpus.txt"),), seqlen=32), device="cpu")
    store = ResultsStore(tmp_path / "s.db")
    run_sweep(config, store, log=lambda *_: None)
    store.close()
    files = write_report(tmp_path / "s.db", tmp_path / "report")
    html = files["html"].read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html), "the page must be self-contained"
    dom, console = render(files["html"])
    assert console == []
    assert dom.count("<table") == 6  # perplexity, leaderboard, human vs generated, runtime, end-to-end, size
    assert dom.count("<svg") == 3  # ppl vs level, quality vs size, runtime
    assert "Perplexity on" in dom and "Running time per algorithm" in dom and "Leaderboard" in dom
    for label in ("0.00 (dense)", "0.50", "0.90", "2:4"):
        assert f"<td>{label}</td>" in dom
