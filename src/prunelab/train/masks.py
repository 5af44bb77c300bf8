"""Masks as first-class results: which prunable weights are pruned, held exactly at zero through fine-tuning,
LoRA merges and further pruning steps.

A mask is a bool tensor in the engine's (out, in) orientation, True where the weight is pruned, one per prunable
layer, keyed by the layer name the engine reports (``model.layers.3.mlp.up_proj``). A model's masks are read off
its exact zeros, so a pruned folder written by any tool carries them.

Why the zeros survive AdamW exactly: the gradient of a masked weight is set to 0 before the step and its two
moment estimates are set to 0 after it, so the update is 0 / (√0 + ε) = 0 and decoupled weight decay multiplies
0 by (1 − lr·wd). Nothing is re-zeroed after the step: ``check`` (debug mode, after every step) would see a
weight that moved.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models import ModelAdapter


class Masks:
    def __init__(self, layers: dict[str, torch.nn.Module], masks: dict[str, torch.Tensor]):
        self.layers = layers  # name -> the Linear/Conv1D module (kept by identity: LoRA wrapping does not replace it)
        self.masks = masks  # name -> bool (out, in), True = pruned

    @classmethod
    def from_model(cls, model) -> "Masks":
        adapter = ModelAdapter(model)
        layers = dict(adapter.named_prunable_layers())
        return cls(layers, {name: adapter.get_weight(layer) == 0 for name, layer in layers.items()})

    # -- counts ----------------------------------------------------------------------------------------------
    @property
    def zeros(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def for_engine(self) -> dict[str, torch.Tensor]:
        """Prior masks for ``prune_model``: these weights stay pruned in the next pruning step."""
        return dict(self.masks)

    def _param_mask(self, name: str) -> torch.Tensor:
        return ModelAdapter.oriented(self.layers[name], self.masks[name])

    # -- holding the zeros -------------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight (after a LoRA merge, or to adopt masks onto a model)."""
        for name, layer in self.layers.items():
            layer.weight.masked_fill_(self._param_mask(name), 0.0)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for name, layer in self.layers.items():
            if layer.weight.grad is not None:
                layer.weight.grad.masked_fill_(self._param_mask(name), 0.0)

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the masked entries of every per-weight state tensor (AdamW's exp_avg, exp_avg_sq)."""
        for name, layer in self.layers.items():
            state = optimizer.state.get(layer.weight)
            if not state:
                continue
            mask = self._param_mask(name)
            for value in state.values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    value.masked_fill_(mask, 0.0)

    @torch.no_grad()
    def violations(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Masked entries that are not exactly zero: in the weights, and in the optimizer state if given."""
        weights = state = 0
        for name, layer in self.layers.items():
            mask = self._param_mask(name)
            weights += int((layer.weight[mask] != 0).sum())
            if optimizer is not None:
                for value in optimizer.state.get(layer.weight, {}).values():
                    if torch.is_tensor(value) and value.shape == mask.shape:
                        state += int((value[mask] != 0).sum())
        return {"weights": weights, "optimizer_state": state}

    def check(self, optimizer: torch.optim.Optimizer | None = None, where: str = "") -> None:
        bad = self.violations(optimizer)
        if bad["weights"] or bad["optimizer_state"]:
            raise RuntimeError(f"mask violated{' ' + where if where else ''}: {bad['weights']} pruned weights and "
                               f"{bad['optimizer_state']} optimizer-state entries are not zero")

    def extend(self, model) -> int:
        """Adopt the zeros of ``model`` (after a pruning step) into the masks; returns how many were added.
        A weight pruned before must still be zero (each step only adds zeros)."""
        adapter = ModelAdapter(model)
        added = 0
        for name, layer in self.layers.items():
            now = adapter.get_weight(layer) == 0
            lost = int((self.masks[name] & ~now).sum())
            if lost:
                raise RuntimeError(f"{name}: {lost} weights pruned in an earlier step are no longer zero")
            added += int((now & ~self.masks[name]).sum())
            self.masks[name] = now
        return added

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Bit-packed (one bit per weight)."""
        return {name: {"shape": list(m.shape), "bits": torch.from_numpy(np.packbits(m.numpy().ravel()))}
                for name, m in self.masks.items()}

    def load_state_dict(self, state: dict) -> None:
        for name in self.layers:
            entry = state[name]
            count = int(np.prod(entry["shape"]))
            bits = np.unpackbits(entry["bits"].numpy(), count=count).astype(bool)
            self.masks[name] = torch.from_numpy(bits).view(*entry["shape"])
