"""benchmarks/measure.py: the GNU time report parser every peak-memory benchmark relies on."""
import sys
from pathlib import Path

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
