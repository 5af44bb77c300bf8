"""Named text corpora: where each is read from, and the rules that make numbers match published ones.

Resolution order, the same for every corpus (and for zero-shot tasks, see eval/tasks.py):
1. the data directory: ``$PRUNELAB_DATA`` if set, else the first of ``./shared/data`` and ``../shared/data``
   (from the working directory) that exists;
2. the Hugging Face Hub: the very file the papers' code reads, downloaded once into the standard HF cache, so
   later runs need no network (``HF_HUB_OFFLINE=1`` works then).
Each corpus comes back as a list of documents ("rows") with the sha256 of what was read and its provenance (local
path, or Hub id + commit + file sha256), so a run record names exactly what it used.

Also readable: any local .txt/.jsonl(.gz) file, and ``hf:DATASET[:CONFIG][?data_files=...&revision=...&column=...
&joiner=...&sampling=stream|documents&first_rows=N]`` through the `datasets` library. An ``hf:`` spec naming a
dataset a known corpus comes from gets that corpus's joining and sampling rules.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from .hub import HubFile, commit_of, download, load_dataset_rows

SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


@dataclass(frozen=True)
class Source:
    """Where one split of a corpus can be read: local candidates (path inside the data directory, format; the first
    present wins) and the Hub file. ``first_rows`` keeps the first N documents (C4 validation: 1100)."""
    local: tuple[tuple[str, str], ...]
    hub: HubFile | None
    local_note: str = ""
    hub_note: str = ""
    first_rows: int | None = None


@dataclass(frozen=True)
class CorpusSpec:
    joiner: str  # how rows are joined into one evaluation stream
    stream: bool  # calibration offsets are drawn in the joined stream (running text), not in random documents
    eval_split: str
    splits: dict[str, Source]
    max_eval_windows: int | None = None  # evaluation keeps at most this many windows
    rule: str = ""
    split_aliases: dict = field(default_factory=dict)

    def split_name(self, split: str | None) -> str:
        split = SPLIT_ALIASES.get(split, split) if split else self.eval_split
        return self.split_aliases.get(split, split)


_C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
_C4_VALID = "en/c4-validation.00000-of-00008.json.gz"
CORPORA: dict[str, CorpusSpec] = {
    "wikitext2": CorpusSpec("\n\n", True, "test", {
        split: Source(((f"wikitext-2-raw/wiki.{raw}.raw", "wikitext_raw"),),
                      HubFile("Salesforce/wikitext", f"wikitext-2-raw-v1/{split}-00000-of-00001.parquet", "parquet",
                              size=size))
        for split, raw, size in (("test", "test", "0.7 MB"), ("validation", "valid", "0.7 MB"), ("train", "train", "6.4 MB"))},
        rule="HF rows joined with '\\n\\n'"),
    "ptb": CorpusSpec(" ", True, "test", {
        split: Source(((f"ptb/ptb.{txt}.txt", "lines"),),
                      HubFile("ptb-text-only/ptb_text_only", f"penn_treebank/{split}/0000.parquet", "parquet",
                              "sentence", revision="refs/convert/parquet", size=size),
                      hub_note="the Hub's parquet conversion of ptb_text_only (its loading script no longer runs "
                               "under current `datasets`)")
        for split, txt, size in (("test", "test", "0.3 MB"), ("validation", "valid", "0.3 MB"), ("train", "train", "3 MB"))},
        rule="sentences joined with ' '"),
    "c4": CorpusSpec(" ", False, "validation", {
        "train": Source((("c4/c4-train.00000-of-01024.json.gz", "jsonl.gz"),
                         ("c4/c4-train.00000-of-01024.first1000.jsonl", "jsonl")),
                        HubFile("allenai/c4", _C4_TRAIN, "jsonl.gz", size="about 320 MB"),
                        local_note="local copy; c4-train...first1000.jsonl holds only the first 1000 documents of "
                                   "shard 0, so calibration draws differ from runs on the full shard",
                        hub_note="the full train shard 0 (as SparseGPT and Wanda read it)"),
        "validation": Source((("c4/c4-validation.00000-of-00008.json.gz", "jsonl.gz"),),
                             HubFile("allenai/c4", _C4_VALID, "jsonl.gz", size="about 40 MB"),
                             hub_note="validation shard 0, first 1100 documents", first_rows=1100),
    }, max_eval_windows=256, split_aliases={"test": "validation"},  # C4 has no test split; papers use validation
        rule="SparseGPT's rule: first 1100 validation documents joined with ' ', truncated to 256 x seqlen tokens"),
}
LOCAL_CORPORA = {name: {split: src.local[0][0] for split, src in spec.splits.items()} for name, spec in CORPORA.items()}


@dataclass
class Corpus:
    name: str
    split: str
    rows: Sequence[str]
    sha256: str  # of the file(s) read, or of the rows for `datasets` reads
    source: str  # the file or dataset id it came from
    joiner: str = "\n\n"
    stream: bool = False
    provenance: dict = field(default_factory=dict)
    max_eval_windows: int | None = None

    def joined(self) -> str:
        return self.joiner.join(self.rows)


def data_dir() -> Path:
    env = os.environ.get("PRUNELAB_DATA")
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


# ---------------------------------------------------------------- readers (one per file format)

def _wikitext_rows(text: str) -> list[str]:
    # As the HF `wikitext-2-raw-v1` rows: each line keeps its trailing "\n"; a blank line (" \n") is "".
    return ["" if line.strip() == "" else line for line in text.splitlines(keepends=True)]


class JsonlRows(Sequence):
    """The documents of a JSONL file, parsed only when read: the full C4 train shard is ~0.8 GB of text in
    356k documents, of which calibration reads a few hundred, so it stays one bytes buffer plus line offsets."""

    def __init__(self, raw: bytes, column: str = "text"):
        self.raw, self.column, starts, pos = raw, column, [], 0
        while pos < len(raw):
            end = raw.find(b"\n", pos)
            end = len(raw) if end < 0 else end
            if raw[pos:end].strip():
                starts.append((pos, end))
            pos = end + 1
        self.spans = starts

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start, end = self.spans[i]
        record = json.loads(self.raw[start:end])
        if self.column not in record:
            raise ValueError(f"line {i + 1} of the JSONL file has no {self.column!r} field")
        return record[self.column]


def read_rows(path: Path, fmt: str, column: str = "text") -> Sequence[str]:
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return [str(v) for v in pq.read_table(path, columns=[column]).column(column).to_pylist()]
    raw = gzip.decompress(path.read_bytes()) if fmt == "jsonl.gz" else path.read_bytes()
    if fmt in ("jsonl", "jsonl.gz"):
        return JsonlRows(raw, column)
    text = raw.decode("utf-8")
    if fmt == "wikitext_raw":
        return _wikitext_rows(text)
    if fmt == "lines":  # HF ptb_text_only `sentence` rows
        return [line.strip() for line in text.splitlines()]
    if fmt == "text":
        return [text]
    raise ValueError(f"unknown corpus file format {fmt!r}")


# ---------------------------------------------------------------- resolution

def resolve_source(name: str, split: str) -> tuple[Path | None, str | None, Source]:
    """(local file, its format) or (None, None), and the split's Source, for a known corpus; nothing is read."""
    spec = CORPORA[name]
    split = spec.split_name(split)
    if split not in spec.splits:
        raise ValueError(f"corpus {name!r} has splits {sorted(spec.splits)}, not {split!r}")
    source = spec.splits[split]
    root = data_dir()
    for rel, fmt in source.local:
        if (root / rel).is_file():
            return root / rel, fmt, source
    return None, None, source


def _local_hint(name: str, split: str) -> str:
    return " or ".join(rel for rel, _ in CORPORA[name].splits[CORPORA[name].split_name(split)].local)


def ensure_corpus(name: str, split: str, log=None) -> Path:
    """Make a known corpus available (downloading it if there is no local copy) without parsing it."""
    local, _, source = resolve_source(name, split)
    if local is not None:
        return local
    return download(source.hub, f"corpus {name}/{split}", _local_hint(name, split), log)


def load_corpus(name: str, split: str | None = None, log=None) -> Corpus:
    """``name`` is a known corpus (see CORPORA), a local .txt/.jsonl(.gz) path, or an ``hf:`` spec.
    ``split`` None means the corpus's evaluation split (test; validation for C4, which has no test split).
    ``log`` receives a line before anything is downloaded."""
    from ..models.loading import sha256_file

    if name in CORPORA:
        spec = CORPORA[name]
        split = spec.split_name(split)
        path, fmt, source = resolve_source(name, split)
        column = "text"
        if path is not None:
            provenance = {"kind": "local", "path": str(path), "note": source.local_note}
        else:
            path = download(source.hub, f"corpus {name}/{split}", _local_hint(name, split), log)
            fmt, column = source.hub.fmt, source.hub.column
            provenance = {"kind": "hub", "repo_id": source.hub.repo_id, "filename": source.hub.filename,
                          "revision": source.hub.revision or "main", "commit": commit_of(path), "note": source.hub_note}
        rows = read_rows(path, fmt, column)
        if source.first_rows is not None:
            rows = rows[:source.first_rows]
            provenance["first_rows"] = source.first_rows
        digest = sha256_file(path)
        provenance["sha256"] = digest
        return _checked(Corpus(name, split, rows, digest, str(path), spec.joiner, spec.stream, provenance,
                               spec.max_eval_windows))
    if name.startswith("hf:"):
        return _load_hf_spec(name[3:], split or "test")
    path = Path(name).expanduser()
    suffixes = "".join(path.suffixes[-2:])
    if path.is_file() and (path.suffix in (".txt", ".raw", ".jsonl") or suffixes == ".jsonl.gz"):
        fmt = "jsonl.gz" if suffixes == ".jsonl.gz" else "jsonl" if path.suffix == ".jsonl" else "text"
        rows = read_rows(path, fmt)
        digest = sha256_file(path)
        return _checked(Corpus(path.name, split or "test", rows, digest, str(path.resolve()),
                               provenance={"kind": "local", "path": str(path.resolve()), "sha256": digest}))
    raise FileNotFoundError(f"unknown corpus {name!r}: use one of {sorted(CORPORA)}, an existing .txt/.jsonl(.gz) "
                            "file, or hf:DATASET[:CONFIG][?data_files=...&revision=...]")


def _checked(corpus: Corpus) -> Corpus:
    if not any(row.strip() for row in corpus.rows):
        raise ValueError(f"corpus {corpus.name}/{corpus.split} ({corpus.source}) has no text")
    return corpus


def known_corpus_of(dataset_id: str, config: str | None) -> str | None:
    """The known corpus whose Hub data an ``hf:`` spec names (so it gets that corpus's rules)."""
    bare = dataset_id.split("/")[-1]
    if bare == "wikitext" and config in (None, "wikitext-2-raw-v1"):
        return "wikitext2"
    if bare == "ptb_text_only":
        return "ptb"
    if dataset_id in ("allenai/c4", "c4"):
        return "c4"
    return None


HF_SPEC_KEYS = {"data_files", "revision", "column", "joiner", "sampling", "first_rows", "split"}


def parse_hf_spec(spec: str) -> tuple[str, str | None, dict]:
    """``DATASET[:CONFIG][?key=value&...]`` -> (dataset id, config, options). Values are URL-decoded."""
    head, _, query = spec.partition("?")
    dataset_id, _, config = head.partition(":")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = set(options) - HF_SPEC_KEYS
    if unknown:
        raise ValueError(f"hf:{spec}: unknown option(s) {sorted(unknown)}; known: {sorted(HF_SPEC_KEYS)}")
    if options.get("sampling", "documents") not in ("documents", "stream"):
        raise ValueError(f"hf:{spec}: sampling must be 'documents' or 'stream'")
    return dataset_id, config or None, options


def _load_hf_spec(spec: str, split: str) -> Corpus:
    dataset_id, config, options = parse_hf_spec(spec)
    split = SPLIT_ALIASES.get(options.get("split", split), options.get("split", split))
    known = CORPORA.get(known_corpus_of(dataset_id, config))
    data_files = options.get("data_files")
    rows, provenance = load_dataset_rows(dataset_id, config, split, f"corpus hf:{spec}",
                                         "a .txt/.jsonl copy (pass its path instead of hf:...)",
                                         revision=options.get("revision"),
                                         data_files={split: data_files} if data_files else None)
    column = options.get("column") or ("sentence" if known is CORPORA["ptb"] else "text")
    if rows and column not in rows[0]:
        raise ValueError(f"hf:{spec}: no column {column!r} (columns: {sorted(rows[0])}); add ?column=NAME")
    rows = [str(r[column]) for r in rows]
    first_rows = int(options["first_rows"]) if "first_rows" in options else (
        known.splits[split].first_rows if known and split in known.splits else None)
    if first_rows is not None:
        rows = rows[:first_rows]
    digest = hashlib.sha256("\x1e".join(rows).encode("utf-8")).hexdigest()
    provenance.update({"column": column, "first_rows": first_rows, "rows_sha256": digest})
    joiner = options.get("joiner", known.joiner if known else "\n\n")
    stream = options["sampling"] == "stream" if "sampling" in options else (known.stream if known else False)
    return _checked(Corpus(f"hf:{spec}", split, rows, digest, f"hf:{dataset_id}", joiner, stream, provenance,
                           known.max_eval_windows if known else None))
