"""Bias as the pruning indicator (seed 002, Table 3): output units are ranked by |b_i|, their layer's bias.

Every weight of output row i gets the score |b_i|; with layer scope the rows of smallest |b_i| are pruned
whole, in that order (ties: lower row first), and the row where the target count falls is pruned from its
first column on, so the layer's count is exact. The bias itself is kept. On a layer without a bias
(Llama, Mistral, Qwen MLPs, SmolLM2: all of them) there is nothing to rank: the method is not applicable
(``NotApplicable`` with that reason, recorded as NA), never a silent no-op. An N:M pattern chooses inside one
row, where all scores are equal, so it is not applicable either.
"""
from dataclasses import dataclass

from .base import NotApplicable, PruningAlgorithm, register


@register
@dataclass
class BiasIndicator(PruningAlgorithm):
    name = "bias"
    needs = frozenset({"bias"})
    scopes = ("layer",)

    def prune(self, weight, stats, pattern):
        if pattern.is_nm:
            raise NotApplicable("bias scores are equal within an output row, so an N:M pattern (chosen inside "
                                "rows) has nothing to rank")
        return super().prune(weight, stats, pattern)

    def scores(self, weight, stats):
        bias = stats.extra.get("bias")
        if bias is None:
            raise NotApplicable("the layer has no bias, so there is nothing to rank; the bias indicator needs "
                                "a model whose prunable layers have biases (OPT, GPT-2)")
        return bias.detach().abs().float().to(weight.device)[:, None].expand_as(weight)
