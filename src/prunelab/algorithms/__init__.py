"""Pruning algorithms, one file each; importing this package registers the built-in ones."""
from . import (alps, bias, bias_correction, dsnot, fisher, gradient, kmeans, magnitude, mama, refit,  # noqa: F401
               sparsegpt, taylor, vardrop, wanda)  # (registration)
from .base import NotApplicable, PruningAlgorithm, available, get_algorithm, register

__all__ = ["NotApplicable", "PruningAlgorithm", "available", "get_algorithm", "register"]
