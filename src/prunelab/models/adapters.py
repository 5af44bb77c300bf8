"""The one place that knows model-family quirks.

An adapter tells the engine where the decoder blocks are, which modules inside a block are prunable, how a
weight is oriented, and how to run one block on cached inputs. Running a block uses whatever arguments the
model itself passes to it (attention masks, rotary embeddings, sliding-window masks, ...): they are recorded
with forward pre-hooks during one ordinary forward pass, so no family's attention plumbing is re-implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: str  # dotted path from the CausalLM to the ModuleList of decoder blocks
    final_norm: str | None  # dotted path of the norm applied before the LM head (None if absent)
    project_out: str | None = None  # OPT-350m style projection before the LM head


FAMILIES = (
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3"), "model.layers", "model.norm"),
    Family("gemma", ("gemma", "gemma2", "gemma3_text"), "model.layers", "model.norm"),
    Family("opt", ("opt",), "model.decoder.layers", "model.decoder.final_layer_norm", "model.decoder.project_out"),
    Family("gpt2", ("gpt2",), "transformer.h", "transformer.ln_f"),
)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)


def _get(root: nn.Module, path: str | None):
    if not path:
        return None
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class _StopForward(Exception):
    pass


def to_device(obj, device):
    """Move every tensor inside nested tuples/lists/dicts to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@dataclass
class BlockCall:
    """The arguments (besides the hidden states) that the model passes to one block."""
    args: tuple
    kwargs: dict

    def to(self, device) -> "BlockCall":
        return BlockCall(to_device(self.args, device), to_device(self.kwargs, device))


class ModelAdapter:
    def __init__(self, model: nn.Module):
        model_type = getattr(model.config, "model_type", None)
        family = next((f for f in FAMILIES if model_type in f.model_types), None)
        if family is None:
            raise ValueError(f"model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}. "
                             "Add a Family entry in prunelab/models/adapters.py to support a new one.")
        self.model = model
        self.family = family
        self.blocks: nn.ModuleList = _get(model, family.blocks)
        if self.blocks is None:
            raise ValueError(f"{type(model).__name__} has no decoder blocks at {family.blocks}")

    # -- weights ---------------------------------------------------------------------------------------------
    @staticmethod
    def prunable_layers(block: nn.Module) -> dict[str, nn.Module]:
        """Every Linear (or GPT-2 Conv1D) inside a decoder block, by its name relative to the block."""
        return {name: mod for name, mod in block.named_modules() if isinstance(mod, (nn.Linear, Conv1D))}

    @staticmethod
    def get_weight(layer: nn.Module) -> torch.Tensor:
        """The weight as (out_features, in_features), the orientation every algorithm assumes."""
        return ModelAdapter.oriented(layer, layer.weight.data)

    @staticmethod
    def stores_transposed(layer: nn.Module) -> bool:
        """GPT-2's Conv1D keeps its weight as (in, out)."""
        return isinstance(layer, Conv1D)

    @staticmethod
    def oriented(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        """A view of ``tensor`` (shaped like the layer's weight, e.g. its gradient or a mask) as (out, in), or of an
        (out, in) tensor in the weight's own layout (for a transposed layer both ways transpose)."""
        return tensor.t() if ModelAdapter.stores_transposed(layer) else tensor

    @staticmethod
    def set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
        weight = weight.t() if isinstance(layer, Conv1D) else weight
        layer.weight.data.copy_(weight.to(layer.weight.dtype))

    def named_prunable_layers(self):
        for i, block in enumerate(self.blocks):
            for name, layer in self.prunable_layers(block).items():
                yield f"{self.family.blocks}.{i}.{name}", layer

    # -- running blocks ----------------------------------------------------------------------------------------
    def _forward_ids(self, input_ids: torch.Tensor):
        device = self.model.get_input_embeddings().weight.device
        return self.model(input_ids=input_ids.to(device), use_cache=False)

    def record_block_calls(self, input_ids: torch.Tensor) -> list[BlockCall]:
        """One full forward on ``input_ids`` (batch 1) recording what each block is called with.

        The calls depend only on sequence length and positions (no padding is ever used), so one recording
        serves every calibration segment of that length.
        """
        calls: list[BlockCall | None] = [None] * len(self.blocks)

        def make_hook(i):
            def hook(_module, args, kwargs):
                rest = args[1:] if args else ()
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                calls[i] = BlockCall(rest, kw)
            return hook

        handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        try:
            with torch.no_grad():
                self._forward_ids(input_ids[:1])
        finally:
            for h in handles:
                h.remove()
        return calls

    def block_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states entering block 0 for each row of ``input_ids``; shape (n, seqlen, hidden)."""
        captured = []

        def hook(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        handle = self.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                for row in input_ids:
                    try:
                        self._forward_ids(row[None])
                    except _StopForward:
                        pass
        finally:
            handle.remove()
        return torch.cat(captured, dim=0).cpu()

    @staticmethod
    def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
        out = block(hidden, *call.args, **call.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, output projection and LM head: logits from the last block's output."""
        norm = _get(self.model, self.family.final_norm)
        if norm is not None:
            hidden = norm(hidden)
        project_out = _get(self.model, self.family.project_out)
        if project_out is not None:
            hidden = project_out(hidden)
        logits = self.model.get_output_embeddings()(hidden)
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits
