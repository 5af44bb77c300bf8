#!/usr/bin/env python
"""Run llm-compressor's own SparseGPT layer solve (``sparsify_weight``) on given weights and Hessians.
Runs in llm-compressor's venv (see compare.sh); called by solver_parity.py, which supplies the inputs.

    $VENV/bin/python benchmarks/llmcompressor/llmc_layer_solve.py INPUTS.pt OUTPUTS.pt [--sparsity 0.5]
INPUTS.pt: {"W": {name: (out, in)}, "H": {variant: {name: (in, in)}}}; OUTPUTS.pt: {variant: {name: pruned W}}.
"""
import argparse

import torch
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight


def main():
    p = argparse.ArgumentParser()
    p.add_argument("inputs")
    p.add_argument("outputs")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--block-size", type=int, default=128)  # llm-compressor's defaults, as speed.py runs it
    p.add_argument("--dampening-frac", type=float, default=0.01)
    a = p.parse_args()
    data = torch.load(a.inputs)
    out = {}
    for variant, hessians in data["H"].items():
        out[variant] = {}
        for name, weight in data["W"].items():
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            layer.weight.data = weight.clone()
            # sparsify_weight consumes (and modifies) the Hessian it is given: hand it a copy
            _, pruned = sparsify_weight(layer, {layer: hessians[name].clone()}, a.sparsity, 0, 0, a.block_size,
                                        a.dampening_frac, False)
            out[variant][name] = pruned
    torch.save(out, a.outputs)


if __name__ == "__main__":
    main()
