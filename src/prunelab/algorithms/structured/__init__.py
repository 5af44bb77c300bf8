"""Structured pruning criteria, by name: which units (MLP channels, attention heads) or blocks to remove.

Pure tensor math, testable without a model; the engine (engine/structured.py) runs them block by block and the
adapter (models/adapters.py) maps units to tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .compensation import augmented_hessian, flap_bias, refit_consumer, relative_error
from .criteria import choose_removed, cosine_dissimilarity, flap_scores, magnitude_scores, wanda_scores
from .obs import obs_scores, obs_select


@dataclass(frozen=True)
class UnitCriterion:
    name: str
    needs: frozenset[str]  # statistics of the consumer's input (stats.STAT_KINDS)
    scores: Callable  # (producers, consumer, unit_size, stats) -> per-unit importance, higher = keep
    description: str
    greedy: bool = False  # units chosen by obs_select (reconstruction error) rather than by their scores
    mean_bias: bool = False  # compensates with the removed units' mean contribution by default (FLAP)


UNIT_CRITERIA = {c.name: c for c in (
    UnitCriterion("magnitude", frozenset(), magnitude_scores, "L2 norm of the unit's weights (producer rows and "
                  "consumer columns)"),
    UnitCriterion("wanda", frozenset({"sq_norm"}), wanda_scores, "Wanda-sp: Σ|W_ij|·‖X_j‖ over the unit's consumer "
                  "columns"),
    UnitCriterion("flap", frozenset({"sq_norm", "mean"}), flap_scores, "FLAP: input variance × squared consumer "
                  "column norm; the removed units' mean output becomes a bias", mean_bias=True),
    UnitCriterion("obs", frozenset({"hessian"}), obs_scores, "greedy structured OBS: remove the unit whose removal "
                  "(with least-squares compensation) raises the consumer's output error least", greedy=True),
)}
BLOCK_CRITERIA = {"block-influence": "ShortGPT's block influence: 1 − mean cos(block input, block output) over "
                                     "calibration tokens; the least influential blocks are removed"}
STRUCTURED_METHODS = tuple(UNIT_CRITERIA) + tuple(BLOCK_CRITERIA)

__all__ = ["UnitCriterion", "UNIT_CRITERIA", "BLOCK_CRITERIA", "STRUCTURED_METHODS", "augmented_hessian", "flap_bias",
           "refit_consumer", "relative_error", "choose_removed", "cosine_dissimilarity", "flap_scores",
           "magnitude_scores", "wanda_scores", "obs_scores", "obs_select"]
