"""Named text corpora read from local copies, any local .txt/.jsonl file, or a Hugging Face dataset when online.

The data directory is ``$PRUNELAB_DATA`` if set, else the first of ``./shared/data`` and ``../shared/data``
(from the working directory) that exists — the layout of this project's workspace and CI.
Each corpus comes back as a list of documents ("rows") plus the sha256 of the files read, so a run record
can name exactly what it used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# name -> split -> path inside the data directory
LOCAL_CORPORA = {
    "wikitext2": {"test": "wikitext-2-raw/wiki.test.raw", "validation": "wikitext-2-raw/wiki.valid.raw"},
    "ptb": {"test": "ptb/ptb.test.txt", "validation": "ptb/ptb.valid.txt"},
    "c4": {"train": "c4/c4-train.00000-of-01024.first1000.jsonl"},
}
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
# How rows are joined into one evaluation stream (the published perplexity loops' conventions).
JOINERS = {"wikitext2": "\n\n", "ptb": " ", "c4": " "}


@dataclass
class Corpus:
    name: str
    split: str
    rows: list[str]
    sha256: str
    source: str  # the file or dataset id it came from

    def joined(self) -> str:
        return JOINERS.get(self.name, "\n\n").join(self.rows)


def data_dir() -> Path:
    env = os.environ.get("PRUNELAB_DATA")
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def _read(path: Path) -> tuple[str, str]:
    raw = path.read_bytes()
    return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


def _wikitext_rows(text: str) -> list[str]:
    # As the HF `wikitext-2-raw-v1` rows: each line keeps its trailing "\n"; a blank line (" \n") is "".
    return ["" if line.strip() == "" else line for line in text.splitlines(keepends=True)]


def _jsonl_rows(text: str) -> list[str]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            if "text" not in record:
                raise ValueError(f"line {number} of the JSONL file has no 'text' field")
            rows.append(record["text"])
    return rows


def load_corpus(name: str, split: str = "test") -> Corpus:
    """``name`` is a known corpus (wikitext2, ptb, c4), a local .txt/.jsonl path, or ``hf:dataset[:config]``."""
    split = SPLIT_ALIASES.get(split, split)
    if name in LOCAL_CORPORA:
        splits = LOCAL_CORPORA[name]
        if split not in splits:
            raise ValueError(f"corpus {name!r} has splits {sorted(splits)} locally, not {split!r}")
        path = data_dir() / splits[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"corpus {name}/{split} not found at {path}. Point PRUNELAB_DATA at a folder holding "
                f"{splits[split]} (this project's copies live in shared/data), or pass a local .txt/.jsonl file.")
        text, digest = _read(path)
        if name == "wikitext2":
            rows = _wikitext_rows(text)
        elif name == "ptb":
            rows = [line.strip() for line in text.splitlines()]  # HF ptb_text_only `sentence` rows
        else:
            rows = _jsonl_rows(text)
        return Corpus(name, split, rows, digest, str(path))
    if name.startswith("hf:"):
        return _load_hf(name[3:], split)
    path = Path(name).expanduser()
    if path.suffix in (".txt", ".raw", ".jsonl") and path.is_file():
        text, digest = _read(path)
        rows = _jsonl_rows(text) if path.suffix == ".jsonl" else [text]
        return Corpus(path.name, split, rows, digest, str(path.resolve()))
    raise FileNotFoundError(f"unknown corpus {name!r}: use one of {sorted(LOCAL_CORPORA)}, an existing .txt/.jsonl "
                            "file, or hf:DATASET[:CONFIG] (needs the `datasets` package and network)")


def _load_hf(spec: str, split: str) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise ImportError("hf: corpora need the `datasets` package: pip install 'prunelab[hub]'") from None
    dataset_id, _, config = spec.partition(":")
    ds = datasets.load_dataset(dataset_id, config or None, split=split)
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    rows = list(ds[column])
    digest = hashlib.sha256("\x1e".join(rows).encode("utf-8")).hexdigest()
    return Corpus(spec, split, rows, digest, f"hf:{spec}")
