"""The check-algorithm gate: run a pruning plug-in, isolated, on tiny models of every family (runner.py)."""
from .runner import CHECKS, check_algorithm, format_table

__all__ = ["CHECKS", "check_algorithm", "format_table"]
