"""benchmarks/measure.py: the GNU time report parser every peak-memory benchmark relies on, and the commit a
result records."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from measure import parse_time_v  # noqa: E402

REPORT = """\tCommand being timed: "python -m prunelab.cli prune"
\tUser time (seconds): 430.12
\tElapsed (wall clock) time (h:mm:ss or m:ss): {wall}
\tMaximum resident set size (kbytes): 1241088
\tExit status: 0
"""


def test_parses_peak_rss_in_bytes_and_both_wall_clock_formats():
    short = parse_time_v(REPORT.format(wall="4:04.31"))
    assert short == {"max_rss_bytes": 1241088 * 1024, "wall_seconds": 4 * 60 + 4.31}
    long = parse_time_v(REPORT.format(wall="1:02:03"))
    assert long["wall_seconds"] == 3600 + 2 * 60 + 3


def test_missing_fields_are_none_not_zero():
    assert parse_time_v("Command exited with non-zero status 1\n") == {"max_rss_bytes": None, "wall_seconds": None}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_commit_is_dirty_for_code_changes_but_not_for_rewritten_results(tmp_path):
    """A benchmark rewrites its own results file between rows; that must not mark the measured code "+dirty"."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "benchmarks" / "measure.py", tmp_path / "benchmarks")
    (tmp_path / "benchmarks" / "results" / "rows.json").write_text("[]")
    (tmp_path / "engine.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    spec = importlib.util.spec_from_file_location("measure_copy", tmp_path / "benchmarks" / "measure.py")
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)

    assert copy.git_commit() == head
    (tmp_path / "benchmarks" / "results" / "rows.json").write_text("[1]")
    assert copy.git_commit() == head
    (tmp_path / "engine.py").write_text("x = 2\n")
    assert copy.git_commit() == head + "+dirty"
