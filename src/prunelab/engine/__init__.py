from .sequential import LayerReport, PostSteps, prune_model, relative_reconstruction_error
from ..stats import LayerStats, StatsAccumulator

__all__ = ["LayerReport", "PostSteps", "prune_model", "relative_reconstruction_error", "LayerStats", "StatsAccumulator"]
