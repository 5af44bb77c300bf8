from .sequential import EngineOptions, LayerReport, ModelBlocks, PostSteps, prune_model, relative_reconstruction_error
from ..stats import LayerStats, StatsAccumulator

__all__ = ["EngineOptions", "LayerReport", "ModelBlocks", "PostSteps", "prune_model", "relative_reconstruction_error", "LayerStats", "StatsAccumulator"]
