"""Models larger than memory: one decoder block at a time from disk, pruned blocks written out as they are done.

The model object is a skeleton: its parameters live on the ``meta`` device (no memory) except the ones outside
the decoder blocks (embeddings, final norm, LM head), which are read at the start. ``StreamingBlocks`` is the
engine's block source and sink: ``load(i)`` reads block i's tensors from the source file(s) into the skeleton's
block, ``done(i, block)`` writes the pruned block to its own output shard and returns its parameters to ``meta``.
Sources: safetensors shards (each tensor read with plain file reads at the offsets in the file's header: no
memory map, so resident memory is what is materialised, not what was read) or a GGUF file (each tensor
dequantized on demand, exactly as transformers does when loading the whole file).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from torch import nn

# safetensors dtype names <-> torch dtypes (the ones a checkpoint of these families can hold)
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def _read_into(fd: int, tensor: torch.Tensor, offset: int) -> None:
    view = memoryview(tensor.view(-1).view(torch.uint8).numpy()) if tensor.numel() else memoryview(b"")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"short read at offset {offset + done}")
        done += got


class SafetensorsTensors:
    """Lazy access to the tensors of a folder of safetensors files (one file, or shards with an index)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.folder} has no .safetensors files; streaming (--offload disk) reads "
                                    "safetensors or GGUF models (re-save a .bin model with save_pretrained)")
        self.entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int, int]] = {}
        for path in files:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in ST_DTYPES:
                    raise ValueError(f"{path.name}: tensor {name} has dtype {meta['dtype']}, which prunelab "
                                     "cannot stream")
                begin, end = meta["data_offsets"]
                self.entries[name] = (path, ST_DTYPES[meta["dtype"]], tuple(meta["shape"]), 8 + length + begin,
                                      end - begin)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def nbytes(self) -> int:
        return sum(e[4] for e in self.entries.values())

    def read(self, name: str) -> torch.Tensor:
        path, dtype, shape, offset, nbytes = self.entries[name]
        tensor = torch.empty(shape, dtype=dtype)
        if tensor.numel() * tensor.element_size() != nbytes:
            raise ValueError(f"{path.name}: tensor {name} has {nbytes} bytes for shape {shape} {dtype}")
        fd = os.open(path, os.O_RDONLY)
        try:
            _read_into(fd, tensor, offset)
        finally:
            os.close(fd)
        return tensor


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_index(path: Path) -> tuple[str, list[tuple[str, list[int], int, int]]]:
    """A GGUF file's architecture and tensor table: (name, dims, ggml type, absolute data offset) per tensor.

    Reads only the header (gguf's GGUFReader builds every metadata array element by element, which takes tens
    of seconds for a tokenizer of 50k entries; here they are skipped)."""
    with open(path, "rb") as fh:
        def unpack(fmt):
            return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

        def string():
            return fh.read(unpack("<Q")).decode("utf-8")

        def value(kind):
            if kind == 8:
                return string()
            if kind == 9:
                item, count = unpack("<I"), unpack("<Q")
                if item in _GGUF_SCALARS:
                    fh.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(item)
                return None
            return unpack(_GGUF_SCALARS[kind])

        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, n_tensors, n_kv = unpack("<I"), unpack("<Q"), unpack("<Q")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old to stream")
        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            dims = [unpack("<Q") for _ in range(unpack("<I"))]
            infos.append((name, dims, unpack("<I"), unpack("<Q")))
        alignment = meta.get("general.alignment") or 32
        start = fh.tell() + (-fh.tell() % alignment)
    return meta["general.architecture"], [(n, d, t, start + o) for n, d, t, o in infos]


class GGUFTensors:
    """Lazy access to a GGUF file's tensors under their Hugging Face names, each read with plain file reads and
    dequantized on demand with the same dequantization and tensor processing (e.g. Llama's q/k head order) that
    transformers applies when it loads the whole file."""

    def __init__(self, path: str | Path, skeleton: nn.Module):
        from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        self.path = Path(path)
        architecture, infos = _gguf_index(self.path)
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=skeleton.config.to_dict())
        arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == architecture), None)
        if arch is None:
            raise ValueError(f"{self.path.name}: GGUF architecture {architecture!r} is unknown to the gguf package")
        # HF name -> GGUF name through gguf's table (what transformers does, without walking every submodule)
        names = get_tensor_name_map(arch, skeleton.config.num_hidden_layers)
        self.to_hf = {}
        for hf_name in skeleton.state_dict():
            stem, dot, suffix = hf_name.rpartition(".")
            gguf_name = names.get_name(stem) if suffix in ("weight", "bias") else names.get_name(hf_name)
            if gguf_name is not None:
                self.to_hf[gguf_name + dot + suffix if suffix in ("weight", "bias") else gguf_name] = hf_name
        self.tensors = {self.to_hf[info[0]]: info for info in infos if info[0] in self.to_hf}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def nbytes(self) -> int:
        # what the dequantized fp32 tensors take: the size a full load would hold in memory
        return sum(torch.Size(info[1]).numel() * 4 for info in self.tensors.values())

    def read(self, name: str) -> torch.Tensor:
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize
        from gguf.quants import quant_shape_to_byte_shape

        gguf_name, dims, kind, offset = self.tensors[name]
        kind = GGMLQuantizationType(kind)
        shape = tuple(reversed(dims))
        block, type_size = GGML_QUANT_SIZES[kind]
        plain = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                 GGMLQuantizationType.F64: np.float64}
        raw = np.empty(torch.Size(shape).numel() * type_size // block, dtype=np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _read_into(fd, torch.from_numpy(raw), offset)
        finally:
            os.close(fd)
        data = raw.view(plain[kind]).reshape(shape) if kind in plain else raw.reshape(quant_shape_to_byte_shape(shape, kind))
        weights = dequantize(data, kind)
        result = self.processor.process(weights=weights, name=gguf_name, tensor_key_mapping=self.to_hf,
                                        parsed_parameters={"tensors": {}, "config": {}})
        return torch.from_numpy(np.copy(result.weights))


def skeleton_model(config, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The model with every parameter on ``meta`` (no memory); buffers (rotary tables) are real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()  # so the head is the embeddings' tensor, read once
    model.eval()
    model.config.use_cache = False
    return model


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def _unique_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict without tied duplicates (the first name of a shared tensor is kept, as save_pretrained does)."""
    seen, out = set(), {}
    for name, tensor in module.state_dict(prefix=prefix, keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out[name] = tensor
    return out


def write_safetensors(path: Path, tensors: dict, read=None) -> int:
    """Write a safetensors file one tensor at a time. ``tensors``: name -> tensor, or name -> (dtype, shape)
    with ``read(name)`` giving the data when it is needed (so only one tensor is held at a time). Returns bytes."""
    header, offset, specs = {}, 0, []
    for name, t in tensors.items():
        dtype, shape = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else t
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        specs.append((name, dtype, shape))
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, dtype, shape in specs:
            t = tensors[name]
            data = t if isinstance(t, torch.Tensor) else read(name)
            data = data.detach().to("cpu", dtype).contiguous().reshape(shape)
            if data.numel():
                fh.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
            del data
        fh.flush()
        os.fsync(fh.fileno())
    return 8 + len(blob) + offset


class StreamingBlocks:
    """Block source and sink over a skeleton model (see the module docstring).

    ``out``: the output folder; shards go to a staging folder beside it and the whole folder is moved into
    place by ``finish`` (an interrupted run leaves no half-written output). Without ``out`` the pruned blocks
    are dropped (useful to measure). Non-block tensors are read once at the start and copied to the output at
    the end, one at a time.
    """
    streaming = True

    def __init__(self, model: nn.Module, tensors, dtype: torch.dtype, out: str | Path | None = None,
                 force: bool = False):
        from .adapters import ModelAdapter

        self.model, self.tensors, self.dtype = model, tensors, dtype
        self.adapter = ModelAdapter(model)
        self.prefix = self.adapter.family.blocks
        state = _unique_state(model)
        missing = [name for name in state if name not in tensors and state[name].device.type == "meta"]
        if missing:
            raise ValueError(f"{len(missing)} of the model's tensors are not in the checkpoint (e.g. {missing[:3]}); "
                             "this checkpoint cannot be streamed, run without --offload disk")
        self.outside = {n: t for n, t in state.items() if not n.startswith(self.prefix + ".")}
        # counts for the run's summary (the blocks' are added as they are handed back)
        self.params = sum(t.numel() for t in self.outside.values())
        self.nonzero = sum(int(torch.count_nonzero(self._read_outside(n))) for n in self.outside)
        # Only the tensors the model's preamble needs (embeddings) are read now; the head (final norm, LM head)
        # only when something evaluates, and both are dropped again once used.
        from .adapters import _get

        head = [_get(model, self.adapter.family.final_norm), _get(model, self.adapter.family.project_out),
                model.get_output_embeddings()]
        head_tensors = {id(p) for m in head if m is not None for p in m.parameters()}
        input_tensors = {id(p) for p in model.get_input_embeddings().parameters()}  # tied heads are both
        self.head_names = {n for n, t in self.outside.items() if id(t) in head_tensors}
        self._materialize([n for n, t in self.outside.items() if n not in self.head_names or id(t) in input_tensors])
        self.out = Path(out) if out is not None else None
        self.staging = None
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        self.n_shards = len(self.adapter.blocks) + 1
        if self.out is not None:
            from ..export import check_output_dir
            check_output_dir(self.out, force)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.staging-"))

    def __len__(self) -> int:
        return len(self.adapter.blocks)

    def _read_outside(self, name: str) -> torch.Tensor:
        """A tensor outside the blocks in the model's dtype: from the checkpoint, or the model's own buffer."""
        t = self.outside[name]
        return self.tensors.read(name).to(t.dtype) if name in self.tensors else t

    def _materialize(self, names) -> None:
        current = _unique_state(self.model)
        for name in names:
            if current[name].device.type == "meta":
                _set_tensor(self.model, name, self.tensors.read(name).to(current[name].dtype))
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def release_inputs(self) -> None:
        """The calibration inputs are embedded: the tensors outside the blocks go back to meta (the output copies
        them from the source at the end)."""
        current = _unique_state(self.model)
        for name in self.outside:
            _set_tensor(self.model, name, torch.empty_like(current[name], device="meta"))
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def materialize_head(self) -> None:
        """Read the final norm and LM head (for an evaluation)."""
        self._materialize(sorted(self.head_names))

    def _shard_name(self, k: int) -> str:
        return f"model-{k:05d}-of-{self.n_shards:05d}.safetensors"

    def load(self, i: int) -> nn.Module:
        block = self.adapter.blocks[i]
        for name, t in _unique_state(block, f"{self.prefix}.{i}.").items():
            if t.device.type == "meta":
                _set_tensor(self.model, name, self.tensors.read(name).to(t.dtype))
        return block

    def done(self, i: int, block: nn.Module) -> None:
        prefix = f"{self.prefix}.{i}."
        state = _unique_state(block, prefix)
        self.params += sum(t.numel() for t in state.values())
        self.nonzero += sum(int(torch.count_nonzero(t)) for t in state.values())
        if self.staging is not None:
            shard = self._shard_name(i + 1)
            self.total_bytes += write_safetensors(self.staging / shard, state)
            self.weight_map.update({name: shard for name in state})
        for name, t in state.items():  # back to meta: the block's memory is freed
            _set_tensor(self.model, name, torch.empty_like(t, device="meta"))

    def close(self) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def finish(self, tokenizer, record: dict) -> Path:
        """Write the non-block tensors, the index, config, tokenizer and record; move the folder into place."""
        from ..export import RECORD_NAME, write_json
        from .loading import strip_quantization_config

        if self.staging is None:
            raise ValueError("this streaming run has no output folder")
        try:
            shard = self._shard_name(self.n_shards)
            specs = {n: (t.dtype, tuple(t.shape)) for n, t in self.outside.items()}
            # unchanged by pruning: copied from the source one tensor at a time
            self.total_bytes += write_safetensors(self.staging / shard, specs, read=self._read_outside)
            self.weight_map.update({name: shard for name in specs})
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            strip_quantization_config(self.model)
            self.model.config.save_pretrained(self.staging)
            if getattr(self.model, "generation_config", None) is not None:
                self.model.generation_config.save_pretrained(self.staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.staging)
            write_json(self.staging / RECORD_NAME, record)
            if self.out.exists():
                shutil.rmtree(self.out)
            os.replace(self.staging, self.out)
        except BaseException:
            self.close()
            raise
        self.staging = None
        return self.out


def _gguf_meta_folder(path: Path, sha256: str) -> Path:
    """A folder with the GGUF's config and tokenizer (parsing them out of the GGUF takes tens of seconds, so it is
    done once): the full dequantized cache folder when it exists, else a config-and-tokenizer-only cache entry."""
    from transformers import AutoConfig, AutoTokenizer

    from .loading import cache_dir

    full = cache_dir() / "gguf" / sha256[:16]
    if (full / "config.json").is_file():
        return full
    target = cache_dir() / "gguf-meta" / sha256[:16]
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        config.save_pretrained(staging)
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(staging)
        os.replace(staging, target)  # atomic: a killed parse leaves no half-written entry
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def _tensors_and_config(resolved, dtype: torch.dtype, trust_remote_code: bool):
    """(skeleton model, tensor reader, tokenizer) for a resolved source, without reading any weights."""
    from transformers import AutoConfig, AutoTokenizer

    if resolved.kind in ("embedded", "gguf"):
        path = Path(resolved.location)
        meta = _gguf_meta_folder(path, resolved.identity["sha256"])
        config = AutoConfig.from_pretrained(meta)
        tokenizer = AutoTokenizer.from_pretrained(meta)
        model = skeleton_model(config, dtype, trust_remote_code)
        return model, GGUFTensors(path, model), tokenizer
    folder = resolved.location
    if resolved.kind == "hub":
        from huggingface_hub import snapshot_download
        folder = snapshot_download(resolved.location, revision=resolved.identity.get("revision"),
                                   allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return skeleton_model(config, dtype, trust_remote_code), SafetensorsTensors(folder), tokenizer


def open_streaming(source: str, dtype: str = "float32", trust_remote_code: bool = False,
                   out: str | Path | None = None, force: bool = False, resolved=None):
    """Open ``source`` for block-by-block pruning: (skeleton model, tokenizer, ModelSource, StreamingBlocks).
    Only the tensors outside the decoder blocks (embeddings, final norm, head) are read now."""
    from .loading import DTYPES, resolve_source

    resolved = resolved or resolve_source(source)
    from ..formats import is_compressed_folder
    if resolved.kind == "folder" and is_compressed_folder(resolved.location):
        raise ValueError(f"{resolved.location} is a compressed checkpoint (bitmask/nm), expanded in memory, not "
                         "streamed; drop --offload disk, or write it dense first: prunelab export DIR --format dense "
                         "--out DIR2")
    model, tensors, tokenizer = _tensors_and_config(resolved, DTYPES[dtype], trust_remote_code)
    return model, tokenizer, resolved, StreamingBlocks(model, tensors, DTYPES[dtype], out=out, force=force)


def weights_bytes(resolved, dtype: str = "float32") -> int | None:
    """What the model's weights would take in memory in ``dtype`` (None when unknown before downloading)."""
    from .loading import DTYPES

    size = torch.empty((), dtype=DTYPES[dtype]).element_size()
    if resolved.kind in ("embedded", "gguf"):
        _, infos = _gguf_index(Path(resolved.location))
        return sum(torch.Size(dims).numel() for _, dims, _, _ in infos) * size
    if resolved.kind == "folder":
        folder = Path(resolved.location)
        if any(folder.glob("*.safetensors")):
            tensors = SafetensorsTensors(folder)
            return sum(torch.Size(e[2]).numel() for e in tensors.entries.values()) * size
        files = list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
        return sum(f.stat().st_size for f in files) or None
    return None
