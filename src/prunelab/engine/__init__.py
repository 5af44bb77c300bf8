from .sequential import LayerReport, prune_model, relative_reconstruction_error
from .stats import LayerStats, StatsAccumulator

__all__ = ["LayerReport", "prune_model", "relative_reconstruction_error", "LayerStats", "StatsAccumulator"]
