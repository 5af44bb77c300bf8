"""prunelab: prune causal language models with many algorithms and evaluate them under one protocol."""
from .api import PruneResult, evaluate, load, prune
from .config import CalibrationConfig, PruneConfig
from .patterns import Pattern
from .train import FinetuneConfig, finetune, iterative

__version__ = "0.1.0"
__all__ = ["prune", "evaluate", "load", "finetune", "iterative", "PruneResult", "PruneConfig", "CalibrationConfig", "FinetuneConfig",
           "Pattern", "__version__"]
