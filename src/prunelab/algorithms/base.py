"""The contract every pruning algorithm follows, and the registry that finds them by name.

An algorithm is pure tensor math on one layer: it receives the dense weight (out × in, fp32), the statistics
of that layer's calibration inputs it asked for (``needs``), and a Pattern; it returns the new weight with
exact zeros where it pruned. Third-party algorithms register with ``@register`` or through the
``prunelab.algorithms`` entry-point group, and are then usable everywhere by name.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import ClassVar

import torch

from ..stats import LayerStats
from ..patterns import Pattern, select_pruned

_REGISTRY: dict[str, type["PruningAlgorithm"]] = {}


class PruningAlgorithm:
    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()  # subset of engine.stats.STAT_KINDS
    default_scope: ClassVar[str] = "layer"
    scopes: ClassVar[tuple[str, ...]] = ("layer", "row")
    corrects_bias: ClassVar[bool] = False  # engine adds (Ŵ − W)·E[x] to the layer bias by default

    def scores(self, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
        """Importance of each weight (higher = keep). Score-based methods define only this."""
        raise TypeError(f"{type(self).__name__} defines neither scores() nor prune()")

    def prune(self, weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern,
              prior: torch.Tensor | None = None) -> torch.Tensor:
        """``prior``: weights already pruned (True) that must stay pruned; they are chosen first, so a step
        towards a higher sparsity only adds zeros (iterative pruning)."""
        scores = self.scores(weight, stats)
        if prior is None:
            return weight.masked_fill(select_pruned(scores, pattern), 0.0)
        return weight.masked_fill(select_pruned(scores.masked_fill(prior, float("-inf")), pattern) | prior, 0.0)

    def options(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


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
