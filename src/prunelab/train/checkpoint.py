"""Checkpoints that survive ``kill -9``, kept beside the output folder, never in it.

A run writing to ``runs/ft`` keeps its state in ``runs/.ft.work/``: ``run.json`` (the identity of the run: full
config, model and data checksums, versions, thread count) and ``state.pt`` (weights, optimizer state, masks, data
position, RNG state, logs). ``state.pt`` is written to a temporary file, flushed to disk and renamed over the old
one, so a kill at any moment leaves either the previous checkpoint or the new one. Rerunning the same command
finds the folder, checks that the identity matches and continues from the checkpoint; the output folder itself
appears only when the run is complete (export.save_pruned stages it), and the work folder is removed after.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..export import json_safe

STATE = "state.pt"
IDENTITY = "run.json"


def work_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.work"


def _canonical(identity: dict) -> str:
    return json.dumps(json_safe(identity), sort_keys=True, indent=1)


class WorkDir:
    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        self.identity = identity

    def load(self, force: bool = False) -> dict | None:
        """The saved state of this same run, or None to start fresh. A folder left by a *different* run is an
        error unless ``force`` (then it is cleared), so a changed flag never silently continues an old run."""
        ident = self.path / IDENTITY
        if not ident.is_file():
            if self.path.exists():  # killed before the identity was written: nothing worth keeping
                shutil.rmtree(self.path)
            return None
        if ident.read_text() != _canonical(self.identity):
            if not force:
                saved = json.loads(ident.read_text())
                changed = sorted(k for k in set(saved) | set(json_safe(self.identity))
                                 if saved.get(k) != json_safe(self.identity).get(k))
                raise FileExistsError(
                    f"{self.path} holds the checkpoint of a different run (differs in: {', '.join(changed)}); rerun "
                    "the original command to resume it, or pass --force to discard it and start over")
            shutil.rmtree(self.path)
            return None
        state = self.path / STATE
        if not state.is_file():
            return None
        return torch.load(state, map_location="cpu", weights_only=False)

    def save(self, state: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        ident = self.path / IDENTITY
        if not ident.is_file():
            _atomic_write_bytes(ident, _canonical(self.identity).encode())
        tmp = self.path / (STATE + ".tmp")
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / STATE)
        _fsync_dir(self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    import random

    import numpy as np
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
