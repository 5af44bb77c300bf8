"""Files and datasets from the Hugging Face Hub, with one clear error when they cannot be had.

Downloads go to the standard Hugging Face cache (``HF_HOME``, default ``~/.cache/huggingface``), so a second run
needs no network and works with ``HF_HUB_OFFLINE=1``. Every failure to reach the Hub becomes a
:class:`DataUnavailableError` naming the dataset, the Hub id and the two ways out.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class DataUnavailableError(FileNotFoundError):
    """A corpus or task has no local copy and cannot be fetched from the Hub."""


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub dataset repository, read with ``fmt`` (jsonl, jsonl.gz, parquet)."""
    repo_id: str
    filename: str
    fmt: str
    column: str = "text"
    revision: str | None = None  # None: the default branch; the commit actually read is recorded
    size: str = ""  # approximate download size, for messages and `prunelab data`

    def describe(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}{at}: {self.filename}" + (f" ({self.size})" if self.size else "")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached, or None if it may be. Only a failed DNS lookup counts (fast, and never
    wrong about a proxy: with a proxy configured nothing is assumed)."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"{host} cannot be resolved ({exc.strerror or exc})"
    return None


def unavailable(what: str, hub_id: str, reason: str, local_hint: str) -> DataUnavailableError:
    """``what`` is "corpus NAME/SPLIT" or "task NAME": the message names it, the Hub id and both ways out."""
    name = what.split()[-1]
    ahead = "" if name.startswith("hf:") else f"; `prunelab data --download {name}` fetches it ahead of time"
    return DataUnavailableError(
        f"{what}: no local copy, and the Hugging Face Hub copy ({hub_id}) is not in the cache and cannot be "
        f"downloaded ({reason}). Either connect to the internet (it is downloaded once into the Hugging Face "
        f"cache{ahead}), or set PRUNELAB_DATA to a folder holding {local_hint}.")


def commit_of(path: str | Path) -> str | None:
    """The repository commit a cached Hub file belongs to (``.../snapshots/<commit>/...``)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def cached_file(hf: HubFile) -> Path | None:
    """The file's path in the HF cache if it is there already (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hf.repo_id, hf.filename, repo_type="dataset", revision=hf.revision)
    return Path(found) if isinstance(found, str) else None


def download(hf: HubFile, what: str, local_hint: str, log=None) -> Path:
    """The cached file, downloading it first if needed; DataUnavailableError if neither is possible."""
    from huggingface_hub import hf_hub_download

    cached = cached_file(hf)
    if cached is not None:
        return cached
    reason = _hub_unreachable()
    if reason is not None:
        raise unavailable(what, hf.describe(), reason, local_hint)
    if log is not None:
        log(f"{what}: downloading {hf.describe()} from the Hugging Face Hub into its cache (once)")
    try:
        return Path(hf_hub_download(hf.repo_id, hf.filename, repo_type="dataset", revision=hf.revision))
    except Exception as exc:  # connection, auth, missing file: all end the same way for the user
        raise unavailable(what, hf.describe(), f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          local_hint) from exc


def load_dataset_rows(dataset_id: str, config: str | None, split: str, what: str, local_hint: str,
                      revision: str | None = None, data_files=None) -> tuple[list[dict], dict]:
    """Rows of a Hub dataset through the `datasets` library (as lm-evaluation-harness reads its tasks), and
    where they came from."""
    try:
        import datasets
    except ImportError:
        raise ImportError("reading from the Hugging Face Hub needs the `datasets` package: pip install datasets") from None
    hub_id = dataset_id + (f":{config}" if config else "") + f" [{split}]"
    reason = None if _cached_dataset_dir(dataset_id) else _hub_unreachable()
    if reason is not None:
        raise unavailable(what, hub_id, reason, local_hint)
    try:
        kwargs = {"revision": revision} if revision else {}
        if data_files is not None:
            kwargs["data_files"] = data_files
        ds = datasets.load_dataset(dataset_id, config, split=split, **kwargs)
    except Exception as exc:
        raise unavailable(what, hub_id, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", local_hint) from exc
    rows = [dict(r) for r in ds]
    fingerprint = getattr(ds, "_fingerprint", None)
    return rows, {"kind": "hub", "dataset": dataset_id, "config": config, "split": split,
                  "revision": revision or "default branch", "fingerprint": fingerprint}


def _cached_dataset_dir(dataset_id: str) -> Path | None:
    """The `datasets` cache folder of a dataset if one exists (``<owner>___<name>``), for `prunelab data`."""
    root = Path(os.environ.get("HF_DATASETS_CACHE") or
                Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "datasets")
    folder = root / dataset_id.replace("/", "___")
    return folder if folder.is_dir() and any(folder.rglob("*.arrow")) else None
