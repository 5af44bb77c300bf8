"""The one place that knows model-family quirks.

An adapter tells the engine where the decoder blocks are, which modules inside a block are prunable, how a
weight is oriented, and how to run one block on cached inputs. Running a block uses whatever arguments the
model itself passes to it (attention masks, rotary embeddings, sliding-window masks, ...): they are recorded
with forward pre-hooks during one ordinary forward pass, so no family's attention plumbing is re-implemented.
"""
from __future__ import annotations

from collections import Counter
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


# -- structure: which tensors make up a removable unit, and how a smaller model is described ---------------------
@dataclass(frozen=True)
class UnitMap:
    """Where one kind of removable unit lives inside a block (module paths relative to the block).

    channels: unit j is output row j of every producer and input column j of the consumer (an MLP channel).
    heads: query head h is rows h·d … (h+1)·d − 1 of the query projection and the same input columns of the output
    projection (d = head_dim); key/value group k (rows k·d … of each kv projection) serves query heads
    k·q … (k+1)·q − 1, q = query heads per group (transformers' repeat_kv order).
    """
    producers: tuple[str, ...]
    consumer: str
    width_key: str | None = None  # channels: config key of the width
    fused: int = 1  # each producer stacks this many blocks of unit rows (Phi-3's gate_up_proj: gate, then up)
    kv: tuple[str, ...] = ()  # heads: key and value projections
    attention: str | None = None  # heads: the attention module (holds head_dim and num_key_value_groups)


_GATED_MLP = UnitMap(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", width_key="intermediate_size")
_LLAMA_HEADS = UnitMap(("self_attn.q_proj",), "self_attn.o_proj", kv=("self_attn.k_proj", "self_attn.v_proj"),
                       attention="self_attn")
UNIT_MAPS = {  # by model type first, then by family
    "channels": {"llama": _GATED_MLP, "gemma": _GATED_MLP, "opt": UnitMap(("fc1",), "fc2", width_key="ffn_dim"),
                 "gpt2": UnitMap(("mlp.c_fc",), "mlp.c_proj", width_key="n_inner"),
                 "phi3": UnitMap(("mlp.gate_up_proj",), "mlp.down_proj", width_key="intermediate_size", fused=2)},
    "heads": {"llama": _LLAMA_HEADS, "gemma": _LLAMA_HEADS},
}
# Why a kind is not offered (the model could not be described by a stock config, or not pruned block by block).
UNITS_NOT_OFFERED = {
    ("heads", "opt"): "its config derives the head size from hidden_size / heads (no head_dim key)",
    ("heads", "gpt2"): "its config derives the head size from hidden_size / heads (no head_dim key)",
    ("heads", "phi3"): "its attention reads num_attention_heads from the shared config in every forward, so heads "
                       "cannot be removed one block at a time",
}
# Config flags (by model type) that give every Linear of that kind a bias, so a compensation bias added to the
# consumer survives save and stock loading (the other layers get zero biases). Not listed: no such flag exists
# (Mistral, Qwen2, Gemma MLPs); GPT-2's c_proj always has a bias.
BIAS_FLAGS = {
    "channels": {"llama": "mlp_bias", "smollm3": "mlp_bias", "opt": "enable_bias"},
    "heads": {"llama": "attention_bias", "smollm3": "attention_bias", "qwen3": "attention_bias", "gemma":
              "attention_bias", "gemma2": "attention_bias", "gemma3_text": "attention_bias", "opt": "enable_bias"},
}
PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers")  # config lists with one entry per decoder block


@dataclass(frozen=True)
class UnitGroup:
    """One kind of removable unit in one block, as the engine plans it."""
    kind: str  # "channels" | "heads"
    consumer: str  # name (relative to the block) of the layer whose input columns the units are
    count: int  # units now in the block
    unit_size: int  # consumer input columns (and producer rows) per unit: 1, or head_dim
    groups: int  # key/value groups the units are split into (heads); 1 for channels
    unit_params: int  # parameters one unit carries (its producer rows and biases, its consumer columns)
    group_params: int  # parameters of one key/value group's own k and v rows (heads); 0 for channels

    @property
    def per_group(self) -> int:
        return self.count // self.groups


def _rows(units, size: int) -> torch.Tensor:
    """Row (or column) indices of ``units`` when each unit spans ``size`` consecutive rows."""
    units = torch.as_tensor(list(units), dtype=torch.long)
    return (units[:, None] * size + torch.arange(size)).flatten()


def _producer_rows(units, size: int, count: int, fused: int) -> torch.Tensor:
    """Rows of ``units`` in a producer that stacks ``fused`` blocks of ``count`` units (Phi-3: gate, then up)."""
    rows = _rows(units, size)
    return torch.cat([rows + k * count * size for k in range(fused)])


def _keep_outputs(layer: nn.Module, index: torch.Tensor) -> None:
    """Keep only these output features of a Linear (rows) or Conv1D (columns of its transposed weight)."""
    w = layer.weight.data
    layer.weight = nn.Parameter(w[:, index].clone() if isinstance(layer, Conv1D) else w[index].clone(),
                                requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.data[index].clone(), requires_grad=layer.bias.requires_grad)
    if isinstance(layer, Conv1D):
        layer.nf = len(index)
    else:
        layer.out_features = len(index)


def _keep_inputs(layer: nn.Module, index: torch.Tensor) -> None:
    w = layer.weight.data
    layer.weight = nn.Parameter(w[index].clone() if isinstance(layer, Conv1D) else w[:, index].clone(),
                                requires_grad=layer.weight.requires_grad)
    if isinstance(layer, Conv1D):
        layer.nx = len(index)
    else:
        layer.in_features = len(index)


def _scatter_outputs(layer: nn.Module, index: torch.Tensor, size: int) -> None:
    """Grow a layer to ``size`` outputs, its current outputs landing at ``index`` and zeros elsewhere."""
    w = layer.weight.data
    if isinstance(layer, Conv1D):
        new = w.new_zeros(w.shape[0], size)
        new[:, index] = w
        layer.nf = size
    else:
        new = w.new_zeros(size, w.shape[1])
        new[index] = w
        layer.out_features = size
    layer.weight = nn.Parameter(new, requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        bias = layer.bias.data.new_zeros(size)
        bias[index] = layer.bias.data
        layer.bias = nn.Parameter(bias, requires_grad=layer.bias.requires_grad)


def _scatter_inputs(layer: nn.Module, index: torch.Tensor, size: int) -> None:
    w = layer.weight.data
    if isinstance(layer, Conv1D):
        new = w.new_zeros(size, w.shape[1])
        new[index] = w
        layer.nx = size
    else:
        new = w.new_zeros(w.shape[0], size)
        new[:, index] = w
        layer.in_features = size
    layer.weight = nn.Parameter(new, requires_grad=layer.weight.requires_grad)


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


def to_dtype(obj, dtype):
    """Cast every floating tensor inside nested tuples/lists/dicts to ``dtype`` (masks, rotary tables)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_dtype(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: to_dtype(v, dtype) for k, v in obj.items()}
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

    # -- structure (units of structured pruning) ------------------------------------------------------------------
    def unit_map(self, kind: str) -> UnitMap:
        model_type = self.model.config.model_type
        if kind not in UNIT_MAPS:
            raise ValueError(f"unknown unit kind {kind!r}; kinds: {', '.join(UNIT_MAPS)}")
        found = lambda k: (k, model_type) not in UNITS_NOT_OFFERED and (model_type in UNIT_MAPS[k]  # noqa: E731
                                                                         or self.family.name in UNIT_MAPS[k])
        if not found(kind):
            offered = [k for k in UNIT_MAPS if found(k)] + ["blocks"]
            why = UNITS_NOT_OFFERED.get((kind, model_type), "no unit map for this family")
            raise ValueError(f"{kind} cannot be removed from {model_type} models: {why}; structures available for "
                             f"it: {', '.join(offered)}")
        return UNIT_MAPS[kind].get(model_type) or UNIT_MAPS[kind][self.family.name]

    def units(self, block: nn.Module, kind: str) -> UnitGroup:
        m = self.unit_map(kind)
        consumer = block.get_submodule(m.consumer)
        producers = [block.get_submodule(p) for p in m.producers]
        if kind == "channels":
            count, size, groups, group_params = self.get_weight(consumer).shape[1], 1, 1, 0
        else:
            attention = block.get_submodule(m.attention)
            size = attention.head_dim
            count = self.get_weight(consumer).shape[1] // size
            kv = [block.get_submodule(p) for p in m.kv]
            groups = self.get_weight(kv[0]).shape[0] // size
            group_params = sum(size * (self.get_weight(k).shape[1] + (k.bias is not None)) for k in kv)
        unit_params = size * (self.get_weight(consumer).shape[0]
                              + m.fused * sum(self.get_weight(p).shape[1] + (p.bias is not None) for p in producers))
        return UnitGroup(kind, m.consumer, count, size, groups, unit_params, group_params)

    def unit_weights(self, block: nn.Module, kind: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(producer weights, consumer weight), each (out, in) in fp32: rows of producers and columns of the
        consumer are grouped unit by unit, ``unit_size`` each."""
        m = self.unit_map(kind)
        producers = [chunk for p in m.producers  # a fused producer counts as its separate parts
                     for chunk in self.get_weight(block.get_submodule(p)).float().chunk(m.fused, dim=0)]
        return producers, self.get_weight(block.get_submodule(m.consumer)).float()

    def remove_units(self, block: nn.Module, kind: str, keep) -> None:
        """Physically remove every unit of ``kind`` not in ``keep`` (indices in the block's current numbering).

        Heads: every key/value group that keeps a query head must keep the same number of them (transformers'
        attention repeats each kv head for a fixed number of query heads); a group that keeps none loses its k/v.
        """
        m = self.unit_map(kind)
        group = self.units(block, kind)
        keep = sorted(int(u) for u in keep)
        if not keep or len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= group.count:
            raise ValueError(f"keep must be distinct unit indices in [0, {group.count}) with at least one, got {keep}")
        if kind == "heads":
            per_group = Counter(h // group.per_group for h in keep)
            if len(set(per_group.values())) != 1:
                raise ValueError(f"every key/value group that keeps query heads must keep the same number; "
                                 f"kept per group: {dict(per_group)}")
            kv_rows = _rows(sorted(per_group), group.unit_size)
            for name in m.kv:
                _keep_outputs(block.get_submodule(name), kv_rows)
            block.get_submodule(m.attention).num_key_value_groups = next(iter(per_group.values()))
        for name in m.producers:
            _keep_outputs(block.get_submodule(name), _producer_rows(keep, group.unit_size, group.count, m.fused))
        _keep_inputs(block.get_submodule(m.consumer), _rows(keep, group.unit_size))

    def set_consumer(self, block: nn.Module, kind: str, weight: torch.Tensor, bias_delta: torch.Tensor | None = None):
        """Write the consumer's (out, in) weight and add ``bias_delta`` to its bias (created as zeros if absent)."""
        layer = block.get_submodule(self.unit_map(kind).consumer)
        self.set_weight(layer, weight)
        if bias_delta is not None:
            if layer.bias is None:
                out = self.get_weight(layer).shape[0]
                layer.bias = nn.Parameter(layer.weight.new_zeros(out), requires_grad=layer.weight.requires_grad)
            layer.bias.data.add_(bias_delta.to(layer.bias))

    def can_store_bias(self, kind: str) -> bool:
        """Whether a bias added to the consumer of ``kind`` survives save and stock loading."""
        consumer = self.unit_map(kind).consumer
        return (self.model.config.model_type in BIAS_FLAGS[kind]
                or all(b.get_submodule(consumer).bias is not None for b in self.blocks))

    def remove_blocks(self, indices) -> None:
        """Delete whole decoder blocks; the rest are renumbered and per-layer config lists follow."""
        config = self.model.config
        drop = sorted(set(int(i) for i in indices))
        n = len(self.blocks)
        if not drop or drop[0] < 0 or drop[-1] >= n or len(drop) >= n:
            raise ValueError(f"blocks to remove must be distinct indices in [0, {n}), fewer than {n}; got {drop}")
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            raise ValueError("this GPT-2 model scales attention by 1/(layer index); removing blocks would change the "
                             "scale of every later block, so depth pruning is refused")
        kept = [i for i in range(n) if i not in drop]
        for key in PER_LAYER_CONFIG_LISTS:
            values = getattr(config, key, None)
            if isinstance(values, (list, tuple)) and len(values) == n:
                setattr(config, key, [values[i] for i in kept])
        for i in reversed(drop):
            del self.blocks[i]
        for new_index, block in enumerate(self.blocks):
            for module in block.modules():  # the KV cache (and its layer types) is indexed by layer_idx
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_index
        config.num_hidden_layers = len(self.blocks)

    def write_structure(self, kinds) -> dict:
        """After units were removed: write the smaller config, padding every block to the widest one with zero
        units where widths differ (exact: a zero unit adds nothing), and turning on bias flags where a consumer
        gained a bias. Returns {kind: {"width": ..., "padded_blocks": [...]}}. Checked against a model built from
        the new config (meta device), so a mismatch fails here instead of at load time."""
        config = self.model.config
        written = {}
        for kind in kinds:
            m = self.unit_map(kind)
            groups = [self.units(b, kind) for b in self.blocks]
            if kind == "channels":
                width = max(g.count for g in groups)
                padded = [i for i, g in enumerate(groups) if g.count < width]
                for i in padded:
                    self._pad_units(self.blocks[i], kind, 1, width)
                setattr(config, m.width_key, width)
                written[kind] = {"width": width, "padded_blocks": padded}
            else:
                n_kv, per_group = max(g.groups for g in groups), max(g.per_group for g in groups)
                padded = [i for i, g in enumerate(groups) if (g.groups, g.per_group) != (n_kv, per_group)]
                for i in padded:
                    self._pad_units(self.blocks[i], kind, n_kv, per_group)
                config.num_attention_heads, config.num_key_value_heads = n_kv * per_group, n_kv
                config.head_dim = groups[0].unit_size  # explicit: no longer hidden_size / heads
                written[kind] = {"heads": n_kv * per_group, "kv_heads": n_kv, "head_dim": groups[0].unit_size,
                                 "padded_blocks": padded}
            flag = BIAS_FLAGS[kind].get(config.model_type)
            if flag and any(b.get_submodule(m.consumer).bias is not None for b in self.blocks):
                setattr(config, flag, True)  # the skeleton check below then adds the zero biases the flag implies
        self._match_config_skeleton()
        return written

    def _pad_units(self, block: nn.Module, kind: str, groups: int, per_group: int) -> None:
        """Grow a block to ``groups`` × ``per_group`` units with zero units (heads keep their group layout)."""
        m = self.unit_map(kind)
        now = self.units(block, kind)
        if kind == "channels":
            units = list(range(now.count))
        else:  # head j of kept group k lands at k·per_group + j; kept groups stay first
            units = [k * per_group + j for k in range(now.groups) for j in range(now.per_group)]
            kv_rows = _rows(range(now.groups), now.unit_size)
            for name in m.kv:
                _scatter_outputs(block.get_submodule(name), kv_rows, groups * now.unit_size)
            block.get_submodule(m.attention).num_key_value_groups = per_group
        total = groups * per_group
        for name in m.producers:
            _scatter_outputs(block.get_submodule(name), _producer_rows(units, now.unit_size, total, m.fused),
                             m.fused * total * now.unit_size)
        _scatter_inputs(block.get_submodule(m.consumer), _rows(units, now.unit_size), total * now.unit_size)

    def _match_config_skeleton(self) -> None:
        """Build the model class from the current config on the meta device; add the zero biases it expects and
        fail if any tensor's name or shape differs (the saved folder would not load with stock transformers)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(self.model.config)
        expected = dict(skeleton.named_parameters())
        for name, module in self.model.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)) and module.bias is None and f"{name}.bias" in expected:
                out = self.get_weight(module).shape[0]
                module.bias = nn.Parameter(module.weight.new_zeros(out), requires_grad=module.weight.requires_grad)
        have = dict(self.model.named_parameters())
        wrong = sorted(n for n in set(expected) | set(have)
                       if n not in expected or n not in have or tuple(expected[n].shape) != tuple(have[n].shape))
        if wrong:
            raise RuntimeError(f"the pruned model does not match its config; first differences: {wrong[:5]}")

    # -- running blocks ----------------------------------------------------------------------------------------
    def _forward_ids(self, input_ids: torch.Tensor):
        device = self.model.get_input_embeddings().weight.device
        return self.model(input_ids=input_ids.to(device), use_cache=False)

    def record_block_calls(self, input_ids: torch.Tensor) -> list[BlockCall]:
        """What each block is called with (besides the hidden states), from one forward of ``input_ids[:1]``.

        Every block is swapped for a pass-through that only records its arguments, so no block computes and the
        blocks need not even be in memory (streaming): the cost is the model's own preamble (embeddings, masks,
        rotary tables). The calls depend only on sequence length and positions (no padding is ever used), and
        their tensors have batch dimension 1, which broadcasts, so one recording serves every batch of
        calibration segments of that length.
        """
        n = len(self.blocks)
        calls: list[BlockCall | None] = [None] * n

        def recorder(i):
            def forward(hidden_states, *args, **kwargs):
                calls[i] = BlockCall(args, kwargs)
                if i == n - 1:  # nothing after the last block is needed (final norm, LM head)
                    raise _StopForward
                return hidden_states
            return forward

        for i, block in enumerate(self.blocks):
            block.forward = recorder(i)  # an instance attribute shadows the class's forward
        try:
            with torch.no_grad():
                self._forward_ids(input_ids[:1])
        except _StopForward:
            pass
        finally:
            for block in self.blocks:
                del block.forward
        return calls

    def block_inputs(self, input_ids: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """Hidden states entering block 0 for each row of ``input_ids``; shape (n, seqlen, hidden), on the
        embeddings' device. Only the model's preamble runs (the forward stops as block 0 is entered)."""
        return torch.cat(list(self.iter_block_inputs(input_ids, batch_size)), dim=0)

    def iter_block_inputs(self, input_ids: torch.Tensor, batch_size: int = 1):
        """``block_inputs`` one batch of rows at a time."""
        captured = []

        def hook(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        handle = self.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                for start in range(0, input_ids.shape[0], batch_size):
                    try:
                        self._forward_ids(input_ids[start:start + batch_size])
                    except _StopForward:
                        pass
                    yield captured.pop()
        finally:
            handle.remove()

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
