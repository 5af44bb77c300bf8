"""Sweeps over methods × levels × patterns, the SQLite results store, and reports."""
from .store import ResultsStore, run_key
from .sweep import DEFAULT_LEVELS, EvalProtocol, SweepConfig, run_sweep

__all__ = ["DEFAULT_LEVELS", "EvalProtocol", "ResultsStore", "SweepConfig", "run_key", "run_sweep"]
