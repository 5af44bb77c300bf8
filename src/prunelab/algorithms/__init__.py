"""Pruning algorithms, one file each; importing this package registers the built-in ones."""
from . import alps, dsnot, magnitude, mama, sparsegpt, wanda  # noqa: F401  (registration)
from .base import PruningAlgorithm, available, get_algorithm, register

__all__ = ["PruningAlgorithm", "available", "get_algorithm", "register"]
