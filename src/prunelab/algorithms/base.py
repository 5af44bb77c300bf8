"""The contract every pruning algorithm follows, and the registry that finds them by name.

An algorithm is pure tensor math on one layer: it receives the dense weight (out × in, fp32), the statistics
it asked for (``needs``: registered kinds, see stats.py, e.g. input norms, XᵀX, gradients, the layer's bias),
and a Pattern; it returns the new weight with exact zeros where it pruned. ``post_steps`` names registered
steps (steps.py) it wants by default, e.g. MAMA's bias correction. Third-party algorithms register with ``@register`` or through the
``prunelab.algorithms`` entry-point group, and are then usable everywhere by name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import sys
from contextlib import contextmanager
from typing import ClassVar

import torch

from ..stats import LayerStats
from ..patterns import Pattern, select_pruned

_REGISTRY: dict[str, type["PruningAlgorithm"]] = {}


class NotApplicable(ValueError):
    """The method cannot run on this model or pattern (e.g. the bias indicator on a model without biases).
    The message is the reason; sweeps record the run as failed with it, reports show NA and the reason."""


class PruningAlgorithm:
    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()  # registered statistic kinds (prunelab.stats.known_stats())
    default_scope: ClassVar[str] = "layer"
    scopes: ClassVar[tuple[str, ...]] = ("layer", "row")
    post_steps: ClassVar[tuple[str, ...]] = ()  # registered post-steps run by default (prunelab.steps)

    def scores(self, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
        """Importance of each weight (higher = keep). Score-based methods define only this."""
        raise TypeError(f"{type(self).__name__} defines neither scores() nor prune()")

    def prune(self, weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern,
              prior: torch.Tensor | None = None) -> torch.Tensor:
        """``prior``: weights already pruned (True) that must stay pruned; they are chosen first, so a step
        towards a higher sparsity only adds zeros (iterative pruning)."""
        return prune_by_scores(weight, self.scores(weight, stats), pattern, prior)

    def options(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


def prune_by_scores(weight: torch.Tensor, scores: torch.Tensor, pattern: Pattern,
                    prior: torch.Tensor | None = None) -> torch.Tensor:
    """Zero the lowest-scoring weights under ``pattern``; weights in ``prior`` stay pruned and are chosen first."""
    if prior is None:
        return weight.masked_fill(select_pruned(scores, pattern), 0.0)
    return weight.masked_fill(select_pruned(scores.masked_fill(prior, float("-inf")), pattern) | prior, 0.0)


def register(cls: type[PruningAlgorithm]) -> type[PruningAlgorithm]:
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} needs a class attribute `name`")
    _REGISTRY[cls.name] = cls
    return cls


def _load_plugins() -> None:
    for entry in importlib.metadata.entry_points(group="prunelab.algorithms"):
        if entry.name not in _REGISTRY:
            register(entry.load())


def available() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_algorithm(name: str, **options) -> PruningAlgorithm:
    _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    try:
        return cls(**options)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        raise ValueError(f"bad options for {name}: {exc}; it accepts: {', '.join(fields) or 'none'}") from None


def algorithm_source(algorithm: PruningAlgorithm) -> dict | None:
    """For an algorithm defined outside prunelab (a plug-in): its class and the sha256 of its source file, so a
    changed plug-in makes a different run; None for built-ins (prunelab's own version identifies those)."""
    cls = type(algorithm)
    if cls.__module__ == "prunelab" or cls.__module__.startswith("prunelab."):
        return None
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    digest = None
    if path:
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    return {"class": cls.__qualname__, "file": path, "sha256": digest}


@contextmanager
def one_cpu_thread(device: torch.device):
    """Run a LAPACK factorization (Cholesky, eigh) on one CPU thread. Blocked factorizations split their work by
    the thread count, so their rounding (and, through near-tied saliencies, the masks) depended on it: a Ray task
    with 1 CPU and a 2-thread local run of the same sweep gave different SparseGPT results. On one thread the
    result is the same everywhere, at a small cost (~0.1 s for a width-1536 Cholesky, ~0.4 s for its eigh)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
