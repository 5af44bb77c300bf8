"""Post-steps: what may run on a layer after the algorithm chose its weights, as registered kinds.

Stages run in this order: ``refine`` (revise the mask, e.g. DSnoT), ``refit`` (new values on the final support,
e.g. PCG least squares), ``bias`` (move what the pruning removed from the mean output into the layer's bias).
A step is a function of one ``LayerSolve``; it declares the statistics it needs, so the engine collects them
without knowing the step. Built-in steps register themselves next to their math (algorithms/dsnot.py,
algorithms/refit.py, algorithms/bias_correction.py); a new one is one ``register_step`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .patterns import Pattern
from .stats import LayerStats

STAGES = ("refine", "refit", "bias")


@dataclass
class LayerSolve:
    """One layer's problem and its current answer, passed through the steps in order."""
    dense: torch.Tensor  # the dense weight, fp32, (out, in)
    weight: torch.Tensor  # the current pruned weight; a step replaces it
    stats: LayerStats | None
    pattern: Pattern
    has_bias: bool = False
    bias_delta: torch.Tensor | None = None  # added to the layer's bias by the engine (bias stage)
    notes: dict = field(default_factory=dict)  # per-layer figures a step records (e.g. error_before_refit)


@dataclass(frozen=True)
class PostStep:
    name: str
    stage: str
    needs: frozenset
    run: Callable[[LayerSolve], None]
    help: str = ""

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"post-step {self.name!r}: stage must be one of {STAGES}")


_STEPS: dict[str, PostStep] = {}


def register_step(step: PostStep) -> PostStep:
    _STEPS[step.name] = step
    return step


def get_step(name: str) -> PostStep:
    _load_builtins()
    if name not in _STEPS:
        raise ValueError(f"unknown post-step {name!r}; available: {', '.join(sorted(_STEPS))}")
    return _STEPS[name]


def steps_of(stage: str) -> list[str]:
    """Names of the registered steps of one stage (e.g. the refinements --refine accepts)."""
    _load_builtins()
    return sorted(n for n, s in _STEPS.items() if s.stage == stage)


def _load_builtins() -> None:
    from . import algorithms  # noqa: F401  (importing the package registers the built-in steps)
