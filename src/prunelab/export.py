"""Save a pruned model as an ordinary Hugging Face folder plus ``prunelab.json``, atomically."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .models.loading import strip_quantization_config

RECORD_NAME = "prunelab.json"


def check_output_dir(out: str | Path, force: bool) -> Path:
    """Fail early (before any pruning) if ``out`` exists and ``force`` was not given."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force (force=True) to overwrite it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create {out}: {parent} is not a writable folder")
    return out


def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_pruned(model, tokenizer, out: str | Path, record: dict, force: bool = False, save_format: str = "dense",
                nm: tuple[int, int] | None = None) -> Path:
    """Write to a staging folder beside ``out`` and move it into place, so an interrupted save leaves no
    half-written model under ``out``.

    ``save_format``: "dense" (an ordinary HF folder, zeros stored), "bitmask" or "nm" (``nm`` = (N, M));
    see prunelab/formats.py."""
    from .formats import SAVE_FORMATS, write_compressed

    if save_format not in SAVE_FORMATS:
        raise ValueError(f"save format {save_format!r} is not one of {SAVE_FORMATS}")
    out = check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    strip_quantization_config(model)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        if save_format == "dense":
            model.save_pretrained(staging, safe_serialization=True)
        else:
            model.config.architectures = [type(model).__name__]  # as save_pretrained records it
            model.config.save_pretrained(staging)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(staging)
            write_compressed(model, staging, save_format, *(nm or (None, None)))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_json(staging / RECORD_NAME, record)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_record(folder: str | Path) -> dict | None:
    path = Path(folder) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None
