"""The results store: one SQLite row per run, keyed by a hash of everything that determines its result.

A row moves ``running`` → ``done`` | ``failed`` | ``interrupted``; each move is one committed transaction, so
a process killed at any moment (even ``kill -9``) leaves either the old row or the new one, never half of
each. A later sweep redoes every row that is not ``done`` (``failed`` ones only when asked). A row ``running``
is left to its worker while that worker is alive: each writer is identified by host, boot, pid, the pid's start
time and a random token (a recycled pid or another machine's identical pid never looks like it); on this host
liveness is read from /proc, for a worker on another host from its heartbeat (refreshed every minute while it
runs; a row whose heartbeat is older than ``STALE_SECONDS`` is taken over).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ..export import json_safe

SCHEMA_VERSION = 2  # 2: worker identity and heartbeat columns (a version-1 store is upgraded in place)
STALE_SECONDS = 600  # a running row of another host whose heartbeat is this old belongs to a dead worker
HEARTBEAT_SECONDS = 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key       TEXT PRIMARY KEY,
    model     TEXT NOT NULL,
    method    TEXT NOT NULL,
    pattern   TEXT NOT NULL,
    level     REAL,
    identity  TEXT NOT NULL,
    status    TEXT NOT NULL,
    reason    TEXT,
    metrics   TEXT,
    layers    TEXT,
    record    TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0,
    pid       INTEGER,
    host      TEXT,
    started   TEXT,
    finished  TEXT,
    worker    TEXT,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS algorithms (
    name      TEXT PRIMARY KEY,
    author    TEXT NOT NULL,
    source    TEXT,
    sha256    TEXT,
    gate      TEXT NOT NULL,
    reason    TEXT,
    result    TEXT,
    checked   TEXT
);
"""


def dumps(obj) -> str:
    """Canonical JSON; NaN/inf stored as strings ("nan", "inf") so the text stays standard JSON."""
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"))


def run_key(identity: dict) -> str:
    """The hash of a run's identity (canonical JSON): equal identities, equal keys, whatever the dict order."""
    return hashlib.sha256(dumps(identity).encode()).hexdigest()[:24]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "-"


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); "-" where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def worker_identity(pid: int | None = None) -> str:
    """host/boot/pid/start-time/token: unique to one process, even across pid reuse, reboots and hosts."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_ticks(pid)}/{uuid.uuid4().hex[:12]}"


def worker_alive(worker: str | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether the writer named ``worker`` may still be running its row."""
    if not worker or worker.count("/") != 4:
        return False
    host, boot, pid, ticks, _token = worker.split("/")
    if host == socket.gethostname() and boot == _boot_id():
        return _pid_alive(int(pid)) and _start_ticks(int(pid)) == ticks
    now = time.time() if now is None else now
    return heartbeat is not None and now - heartbeat < STALE_SECONDS


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode; every change below is one explicit BEGIN IMMEDIATE … COMMIT
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives a crash of the machine too
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) == 1:  # add the worker columns; old rows keep pid/host for liveness
                columns = {r["name"] for r in self._db.execute("PRAGMA table_info(runs)")}
                for column, kind in (("worker", "TEXT"), ("heartbeat", "REAL")):
                    if column not in columns:
                        self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
                self._db.execute("UPDATE meta SET value=? WHERE name='schema'", (str(SCHEMA_VERSION),))
            elif int(row["value"]) != SCHEMA_VERSION:
                raise ValueError(f"{self.path} has results-store schema {row['value']}, this prunelab reads "
                                 f"{SCHEMA_VERSION}; use a new --store file")

        self.worker = worker_identity()
        self._beating = None

    def close(self) -> None:
        if self._beating is not None:
            self._beating.set()
        self._db.close()

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS) -> None:
        """Refresh the heartbeat of this writer's running rows from a background thread (own connection), so a
        sweep on another host can tell a long run from a dead one."""
        if self._beating is not None:
            return
        self._beating = stop = threading.Event()
        path, worker = self.path, self.worker

        def beat():
            db = sqlite3.connect(path, timeout=60, isolation_level=None)
            try:
                while not stop.wait(every):
                    db.execute("UPDATE runs SET heartbeat=? WHERE worker=? AND status='running'", (time.time(), worker))
            finally:
                db.close()

        threading.Thread(target=beat, name="prunelab-store-heartbeat", daemon=True).start()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                db.execute("COMMIT" if exc_type is None else "ROLLBACK")

        return _Tx()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT * FROM runs WHERE key=?", (key,)).fetchone()
        return _row_dict(row) if row else None

    def claim(self, key: str, *, model: str, method: str, pattern: str, level: float | None, identity: dict,
              retry_failed: bool = False) -> str | None:
        """Mark ``key`` running under this writer, unless it needs no work. Returns None when claimed, else why
        it was skipped: ``"done"``, ``"failed"`` (kept unless retry_failed) or ``"busy"`` (a live writer, here
        or on another host, is running it)."""
        me, host, now = os.getpid(), socket.gethostname(), time.time()
        with self._transaction():
            row = self._db.execute("SELECT status, pid, host, worker, heartbeat FROM runs WHERE key=?",
                                   (key,)).fetchone()
            if row is not None:
                if row["status"] == "done":
                    return "done"
                if row["status"] == "failed" and not retry_failed:
                    return "failed"
                if row["status"] == "running" and row["worker"] != self.worker:
                    alive = (worker_alive(row["worker"], row["heartbeat"], now) if row["worker"] else
                             row["host"] == host and row["pid"] != me and _pid_alive(row["pid"]))  # a version-1 row
                    if alive:
                        return "busy"
                self._db.execute("UPDATE runs SET status='running', reason=NULL, attempts=attempts+1, pid=?, "
                                 "host=?, started=?, finished=NULL, worker=?, heartbeat=? WHERE key=?",
                                 (me, host, _now(), self.worker, now, key))
            else:
                self._db.execute("INSERT INTO runs (key, model, method, pattern, level, identity, status, "
                                 "attempts, pid, host, started, worker, heartbeat) "
                                 "VALUES (?, ?, ?, ?, ?, ?, 'running', 1, ?, ?, ?, ?, ?)",
                                 (key, model, method, pattern, level, dumps(identity), me, host, _now(), self.worker,
                                  now))
        return None

    def finish(self, key: str, status: str, *, metrics: dict | None = None, layers: list | None = None,
               record: dict | None = None, reason: str | None = None) -> None:
        if status not in ("done", "failed", "interrupted"):
            raise ValueError(f"unknown run status {status!r}")
        with self._transaction():
            self._db.execute("UPDATE runs SET status=?, reason=?, metrics=?, layers=?, record=?, finished=? "
                             "WHERE key=?", (status, reason, None if metrics is None else dumps(metrics),
                                             None if layers is None else dumps(layers),
                                             None if record is None else dumps(record), _now(), key))

    def note_sweep(self, settings: dict, argv: list[str]) -> None:
        """Remember how the store was filled (shown by reports), one entry per sweep invocation."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             (f"sweep {_now()} pid {os.getpid()}", dumps({"argv": argv, "settings": settings})))

    def note_algorithm(self, name: str, *, author: str, source: str | None, sha256: str | None, gate: str,
                       reason: str | None, result: dict | None) -> None:
        """The check-algorithm verdict of a plug-in (the leaderboard lists its author, and failures' reasons)."""
        if author not in ("human", "generated") or gate not in ("passed", "failed"):
            raise ValueError("author must be human|generated and gate passed|failed")
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO algorithms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (name, author, source, sha256, gate, reason, None if result is None else dumps(result),
                              _now()))

    def algorithms(self) -> list[dict]:
        rows = self._db.execute("SELECT * FROM algorithms ORDER BY name").fetchall()
        return [{**dict(r), "result": json.loads(r["result"]) if r["result"] else None} for r in rows]

    def sweeps(self) -> list[dict]:
        rows = self._db.execute("SELECT name, value FROM meta WHERE name LIKE 'sweep %' ORDER BY name").fetchall()
        return [{"when": r["name"], **json.loads(r["value"])} for r in rows]

    def export_jsonl(self, path: str | Path) -> int:
        """Every finished run (done | failed) and every gate verdict as JSON lines sorted by key, written
        atomically: a store's results as a text file that can be committed, diffed, and merged into another store
        with ``import_jsonl`` (a store is a machine-local file; the lines outlive it). Returns the lines written."""
        runs = self._db.execute("SELECT * FROM runs WHERE status IN ('done', 'failed') ORDER BY key").fetchall()
        lines = [dumps({"run": {c: r[c] for c in _EXPORTED if c not in _JSON_COLUMNS}
                        | {c: json.loads(r[c]) if r[c] is not None else None for c in _JSON_COLUMNS}})
                 for r in runs]
        lines += [dumps({"algorithm": a}) for a in self.algorithms()]
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(path)
        return len(lines)

    def import_jsonl(self, path: str | Path) -> dict:
        """Merge lines written by ``export_jsonl``: a run is added unless this store already has it done (same key:
        same identity), a gate verdict unless this store has one for that name. Returns what was added and kept."""
        added = {"runs": 0, "algorithms": 0, "kept": 0}
        with self._transaction():
            for number, line in enumerate(Path(path).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                entry = json.loads(line)
                if "run" in entry:
                    run = entry["run"]
                    if run.get("status") not in ("done", "failed") or not run.get("key"):
                        raise ValueError(f"{path}:{number}: not an exported run (needs a key and status done|failed)")
                    row = self._db.execute("SELECT status FROM runs WHERE key=?", (run["key"],)).fetchone()
                    if row is not None and row["status"] == "done":
                        added["kept"] += 1
                        continue
                    values = [dumps(run.get(c)) if c in _JSON_COLUMNS and run.get(c) is not None else run.get(c)
                              for c in _EXPORTED]
                    self._db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(_EXPORTED)}) "
                                     f"VALUES ({', '.join('?' * len(_EXPORTED))})", values)
                    added["runs"] += 1
                elif "algorithm" in entry:
                    a = entry["algorithm"]
                    if self._db.execute("SELECT 1 FROM algorithms WHERE name=?", (a["name"],)).fetchone():
                        added["kept"] += 1
                        continue
                    self._db.execute("INSERT INTO algorithms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     (a["name"], a["author"], a.get("source"), a.get("sha256"), a["gate"],
                                      a.get("reason"), None if a.get("result") is None else dumps(a["result"]),
                                      a.get("checked")))
                    added["algorithms"] += 1
                else:
                    raise ValueError(f"{path}:{number}: neither a run nor an algorithm line")
        return added

    def rows(self, status: str | None = None) -> list[dict]:
        query, args = "SELECT rowid AS seq, * FROM runs", ()  # seq: the order runs were first claimed
        if status is not None:
            query, args = query + " WHERE status=?", (status,)
        return [_row_dict(r) for r in self._db.execute(query + " ORDER BY model, method, pattern, level", args)]


# what an exported run keeps: its result and provenance, not the writer's liveness columns
_EXPORTED = ("key", "model", "method", "pattern", "level", "identity", "status", "reason", "metrics", "layers", "record",
             "attempts", "host", "started", "finished")
_JSON_COLUMNS = ("identity", "metrics", "layers", "record")


def _row_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    for column in ("identity", "metrics", "layers", "record"):
        if d.get(column) is not None:
            d[column] = json.loads(d[column])
    return d
