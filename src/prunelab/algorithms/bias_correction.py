"""Bias correction: keep a pruned layer's mean output, E[Ŵx + b] = E[Wx + b'] ⇒ b' = b + (Ŵ − W)·E[x].

A post-step (bias stage) for any method on layers that have a bias (OPT, GPT-2); MAMA asks for it by default.
"""
from ..steps import LayerSolve, PostStep, register_step


def _correct_bias(solve: LayerSolve) -> None:
    if solve.has_bias:
        mean = solve.stats.column_mean().to(solve.dense)
        solve.bias_delta = (solve.dense - solve.weight.to(solve.dense)) @ mean


register_step(PostStep("bias-correction", "bias", frozenset({"mean"}), _correct_bias,
                       "add (Ŵ − W)·E[x] to the layer's bias so its mean output is kept"))
