"""Where ingest keeps records: SQLite by default (``sqlite:///PATH``)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.errors import StorageError


@dataclass(frozen=True)
class IngestedRecord:
    device: str
    site: str
    stream: str
    seq: int
    ts: str
    payload: str


_DDL = """
CREATE TABLE IF NOT EXISTS records (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    ts TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ns INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB
);
"""


class SqliteStore:
    """Idempotent record store keyed by (device, stream, seq)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_DDL)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open ingest database: {exc}", path=str(path),
                               fix="check the directory exists and is writable") from exc

    def store(self, records: list[IngestedRecord]) -> int:
        """Insert records not yet stored, in one transaction; returns how many were new."""
        now = time.time_ns()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO records (device, stream, seq, site, ts, received_ns, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.device, r.stream, r.seq, r.site, r.ts, now, r.payload) for r in records])
            inserted = self._db.total_changes - before
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        return inserted

    def reject(self, topic: str, reason: str, payload: bytes) -> None:
        self._db.execute("INSERT INTO rejects (received_ns, topic, reason, payload) VALUES (?,?,?,?)",
                         (time.time_ns(), topic, reason, payload[:65536]))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def open_store(url: str) -> SqliteStore:
    """Open the store named by ``sqlite:///PATH`` (or a bare path)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        raise StorageError("PostgreSQL ingest is not built yet", path=url,
                           fix="use --db sqlite:///PATH for now")
    if parts.scheme not in ("sqlite", ""):
        raise StorageError(f"unknown database scheme {parts.scheme!r}", path=url,
                           fix="use sqlite:///PATH")
    if parts.scheme and parts.netloc:
        raise StorageError("the path must follow sqlite:/// (three slashes)", path=url,
                           fix="use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    # SQLAlchemy's convention: sqlite:///rel.db is relative, sqlite:////abs.db absolute.
    path = parts.path[1:] if parts.scheme else url
    if not path:
        raise StorageError("no database path", path=url, fix="use sqlite:///PATH")
    return SqliteStore(Path(path))
