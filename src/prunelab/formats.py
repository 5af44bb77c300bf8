"""Compressed checkpoints for pruned models: ``bitmask`` and ``nm`` (N:M packed), in one safetensors file.

Only the decoder blocks' prunable weights (the Linear / GPT-2 Conv1D weights prunelab prunes) are compressed;
every other tensor is stored as it is. A compressed weight ``W`` becomes two tensors:

- bitmask: ``W.values`` (the non-zero entries in row-major order of W as stored) and ``W.bitmask`` (uint8, one
  bit per entry, 1 = kept; entry ``8k + i`` is bit ``i`` of byte ``k``);
- nm: ``W.values`` (the ``m − n`` kept entries of every group of ``m`` consecutive input columns, in column
  order, shape (out, in/m, m−n)) and ``W.indices`` (each kept entry's position in its group, ⌈log2 m⌉ bits,
  packed the same way). The grouping is over input columns of the (out, in) orientation, so GPT-2's Conv1D
  weights (stored (in, out)) are packed transposed (``"transposed": true``).

How to expand them is in the safetensors header's metadata: ``prunelab_format`` (``FORMAT_VERSION``) and
``prunelab_layout``, a JSON object {weight name: {"encoding", "shape", "dtype", "transposed", "n", "m",
"index_bits"}}. The file is called ``COMPRESSED_FILE`` rather than ``model.safetensors`` so that stock
``from_pretrained`` fails clearly on it instead of loading a model with missing weights; ``prunelab.load``
(and every prunelab command) expands it. Expansion writes +0.0 where a weight was pruned, so a model whose
zeros are +0.0 (prunelab writes them with masked_fill) comes back bit for bit.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

SAVE_FORMATS = ("dense", "bitmask", "nm")
COMPRESSED_FILE = "prunelab-compressed.safetensors"
FORMAT_VERSION = "prunelab-sparse-v1"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64"}


# -- bit packing --------------------------------------------------------------------------------------------------
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bool/0-1 tensor -> uint8, little-endian within each byte (element 8k + i is bit i of byte k)."""
    flat = bits.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    weights = (1 << torch.arange(8, dtype=torch.uint8))
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:count].bool()


def pack_ints(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative ints < 2**bits, ``bits`` bits each (low bit first), packed into uint8."""
    flat = values.reshape(-1).to(torch.int64)
    return pack_bits((flat[:, None] >> torch.arange(bits)) & 1)


def unpack_ints(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    b = unpack_bits(packed, count * bits).view(count, bits).to(torch.int64)
    return (b << torch.arange(bits)).sum(dim=1)


# -- one weight --------------------------------------------------------------------------------------------------
def encode_bitmask(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    kept = weight != 0
    return {"values": weight[kept].contiguous(), "bitmask": pack_bits(kept)}


def decode_bitmask(tensors: dict[str, torch.Tensor], shape, dtype) -> torch.Tensor:
    kept = unpack_bits(tensors["bitmask"], math.prod(shape))
    out = torch.zeros(math.prod(shape), dtype=dtype)
    out[kept] = tensors["values"].to(dtype)
    return out.view(shape)


def nm_index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def encode_nm(weight: torch.Tensor, n: int, m: int) -> dict[str, torch.Tensor]:
    """``weight`` (out, in) with at most m − n non-zeros in every group of m consecutive columns."""
    out_features, in_features = weight.shape
    if in_features % m:
        raise ValueError(f"{in_features} input columns are not a multiple of m={m}; save this model as bitmask")
    keep = m - n
    groups = weight.reshape(out_features, in_features // m, m)
    nonzero = groups != 0
    worst = int(nonzero.sum(dim=-1).max()) if groups.numel() else 0
    if worst > keep:
        raise ValueError(f"weight is not {n}:{m} sparse (a group of {m} holds {worst} non-zeros, at most {keep} "
                         "allowed); save it as bitmask, or prune with --pattern N:M")
    position = torch.arange(m).expand_as(groups)
    # non-zeros first (then zeros) in column order; the first `keep` of them, back in column order
    order = torch.where(nonzero, position, position + m).argsort(dim=-1, stable=True)[..., :keep]
    order = order.sort(dim=-1).values
    return {"values": groups.gather(-1, order).contiguous(), "indices": pack_ints(order, nm_index_bits(m))}


def decode_nm(tensors: dict[str, torch.Tensor], shape, dtype, n: int, m: int) -> torch.Tensor:
    out_features, in_features = shape
    keep = m - n
    values = tensors["values"].to(dtype).reshape(out_features, in_features // m, keep)
    order = unpack_ints(tensors["indices"], values.numel(), nm_index_bits(m)).view_as(values)
    out = torch.zeros(out_features, in_features // m, m, dtype=dtype)
    out.scatter_(-1, order, values)
    return out.view(shape)


# -- whole checkpoints ---------------------------------------------------------------------------------------------
def prunable_weight_names(model) -> dict[str, bool]:
    """State-dict names of the compressible weights -> whether the tensor is stored (in, out) (GPT-2 Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    from .models.adapters import ModelAdapter

    return {f"{name}.weight": isinstance(layer, Conv1D) for name, layer in ModelAdapter(model).named_prunable_layers()}


def unique_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors, each shared (tied) tensor once, under the first name that holds it."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype) if tensor.numel() else name
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor
    return state


def compress_state_dict(model, fmt: str, n: int | None = None, m: int | None = None
                        ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors to store, layout) for ``fmt`` in {"bitmask", "nm"}; ``n``/``m`` for nm."""
    if fmt not in ("bitmask", "nm"):
        raise ValueError(f"compressed format must be bitmask or nm, got {fmt!r}")
    if fmt == "nm" and not (n and m and 0 < n < m):
        raise ValueError(f"nm needs a pattern N:M with 0 < N < M, got {n}:{m}")
    compressible = prunable_weight_names(model)
    tensors, layout = {}, {}
    for name, tensor in unique_state_dict(model).items():
        tensor = tensor.detach().cpu()
        if name not in compressible:
            tensors[name] = tensor.contiguous()
            continue
        transposed = compressible[name] and fmt == "nm"
        weight = tensor.t() if transposed else tensor
        try:
            parts = encode_nm(weight, n, m) if fmt == "nm" else encode_bitmask(weight)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        for part, value in parts.items():
            tensors[f"{name}.{part}"] = value
        entry = {"encoding": fmt, "shape": list(weight.shape), "dtype": _DTYPE_NAMES[tensor.dtype],
                 "transposed": transposed}
        if fmt == "nm":
            entry.update({"n": n, "m": m, "index_bits": nm_index_bits(m)})
        layout[name] = entry
    return tensors, layout


def write_compressed(model, folder: str | Path, fmt: str, n: int | None = None, m: int | None = None) -> Path:
    from safetensors.torch import save_file

    tensors, layout = compress_state_dict(model, fmt, n, m)
    path = Path(folder) / COMPRESSED_FILE
    save_file(tensors, str(path), metadata={"format": "pt", "prunelab_format": FORMAT_VERSION,
                                            "prunelab_encoding": fmt, "prunelab_layout": json.dumps(layout)})
    return path


def read_layout(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("prunelab_format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a prunelab compressed checkpoint of version {FORMAT_VERSION} "
                         f"(found {meta.get('prunelab_format')!r}); a newer prunelab may read it")
    return json.loads(meta["prunelab_layout"])


def expand_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a compressed file (tied tensors under their first name only)."""
    from safetensors.torch import load_file

    layout = read_layout(path)
    stored = load_file(str(path))
    parts_of_weights = {f"{w}.{part}" for w in layout for part in ("values", "bitmask", "indices")}
    state = {name: t for name, t in stored.items() if name not in parts_of_weights}
    for name, entry in layout.items():
        parts = {part: stored[f"{name}.{part}"] for part in ("values", "bitmask", "indices")
                 if f"{name}.{part}" in stored}
        dtype = getattr(torch, entry["dtype"])
        if entry["encoding"] == "bitmask":
            weight = decode_bitmask(parts, entry["shape"], dtype)
        elif entry["encoding"] == "nm":
            weight = decode_nm(parts, entry["shape"], dtype, entry["n"], entry["m"])
        else:
            raise ValueError(f"{path}: unknown encoding {entry['encoding']!r} for {name}")
        state[name] = weight.t().contiguous() if entry["transposed"] else weight
    return state


def is_compressed_folder(folder: str | Path) -> bool:
    return (Path(folder) / COMPRESSED_FILE).is_file()


def tensor_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of each tensor's data in a safetensors file, read from its header (the file as it is on disk)."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    return {name: info["data_offsets"][1] - info["data_offsets"][0] for name, info in header.items()
            if name != "__metadata__"}
