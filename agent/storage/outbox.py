"""The durable outbox: every record is committed here before it is published.

A record goes unsent -> sent (the broker's PUBACK) -> ingested (the backend's ack on the
``ack`` topic). With ``delivery = "ingested"`` a record sent but not acknowledged within
the ack timeout goes back to unsent and is published again (ingest dedupes).

SQLite in WAL mode with ``synchronous=NORMAL``: a committed record survives a crash or
SIGKILL of the agent; on a power cut the last few commits since the previous WAL
checkpoint can be lost (SQLite's documented trade-off, which spares the SD card an
fsync per frame). Sequence numbers are assigned in the same transaction as the insert,
so a seq is never reused across restarts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StorageError

SCHEMA_VERSION = 1
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    sent_ns INTEGER,
    acked_ns INTEGER,
    UNIQUE (stream, seq)
);
CREATE INDEX IF NOT EXISTS records_unsent ON records (id) WHERE sent_ns IS NULL;
CREATE INDEX IF NOT EXISTS records_unacked ON records (sent_ns) WHERE acked_ns IS NULL;
"""


@dataclass(frozen=True)
class PendingRecord:
    """A record to append: its payload is built once its seq is known."""

    stream: str
    topic: str
    build: Callable[[int], bytes]
    qos: int = 1


@dataclass(frozen=True)
class StoredRecord:
    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    """One SQLite outbox file; used from one thread."""

    def __init__(self, path: Path, *, until_ingested: bool = True) -> None:
        self.path = path
        self.until_ingested = until_ingested
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_DDL)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            self._last_seq = dict(self._db.execute("SELECT stream, last_seq FROM streams"))
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open outbox database: {exc}", path=str(path),
                               fix="check the state directory is writable and has free space; "
                                   "a corrupt file can be moved aside (its unsent records are "
                                   "then lost)") from exc
        except OSError as exc:
            raise StorageError(f"cannot create state directory: {exc.strerror}",
                               path=str(path.parent),
                               fix="pass --state-dir with a writable directory") from exc

    def close(self) -> None:
        self._db.close()

    def last_seq(self, stream: str) -> int:
        return int(self._last_seq.get(stream, 0))

    def append(self, records: Iterable[PendingRecord]) -> list[int]:
        """Assign seqs and commit the records in one transaction; returns their ids."""
        now = time.time_ns()
        ids: list[int] = []
        seqs = dict(self._last_seq)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for rec in records:
                seq = seqs.get(rec.stream, 0) + 1
                seqs[rec.stream] = seq
                cur = self._db.execute(
                    "INSERT INTO records (stream, seq, topic, payload, qos, created_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (rec.stream, seq, rec.topic, rec.build(seq), rec.qos, now))
                ids.append(int(cur.lastrowid or 0))
            self._db.executemany(
                "INSERT INTO streams (stream, last_seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
                [(s, q) for s, q in seqs.items() if q != self._last_seq.get(s)])
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"cannot commit records: {exc}", path=str(self.path),
                                   fix="check free space on the state directory's filesystem"
                                   ) from exc
            raise
        self._last_seq = seqs
        return ids

    def fetch_unsent(self, after_id: int, limit: int) -> list[StoredRecord]:
        rows = self._db.execute(
            "SELECT id, stream, seq, topic, payload, qos FROM records "
            "WHERE sent_ns IS NULL AND id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [StoredRecord(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4]), int(r[5])) for r in rows]

    def mark_sent(self, record_ids: Iterable[int]) -> None:
        now = time.time_ns()
        try:
            self._db.executemany("UPDATE records SET sent_ns = ? WHERE id = ?",
                                 [(now, i) for i in record_ids])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot mark records sent: {exc}", path=str(self.path)) from exc

    def mark_ingested(self, stream: str, ranges: Iterable[tuple[int, int]]) -> int:
        """Record the backend's ack for inclusive seq ranges of a stream; returns rows newly acked."""
        now = time.time_ns()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            changed = 0
            for lo, hi in ranges:
                cur = self._db.execute(
                    "UPDATE records SET acked_ns = ?, sent_ns = COALESCE(sent_ns, ?) "
                    "WHERE stream = ? AND seq BETWEEN ? AND ? AND acked_ns IS NULL",
                    (now, now, stream, lo, hi))
                changed += int(cur.rowcount)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StorageError(f"cannot record ingest ack: {exc}", path=str(self.path)) from exc
        return changed

    def requeue_unacked(self, sent_before_ns: int) -> int:
        """Sent but never acknowledged before ``sent_before_ns``: back to unsent. Returns count."""
        cur = self._db.execute(
            "UPDATE records SET sent_ns = NULL WHERE acked_ns IS NULL AND sent_ns IS NOT NULL "
            "AND sent_ns < ?", (sent_before_ns,))
        return int(cur.rowcount)

    def unacked_sent(self) -> int:
        return int(self._db.execute(
            "SELECT COUNT(*) FROM records WHERE acked_ns IS NULL AND sent_ns IS NOT NULL").fetchone()[0])

    def backlog(self) -> tuple[int, float | None]:
        """Records not yet delivered (ingested, or sent when delivery is to the broker), and the
        age in seconds of the oldest of them."""
        column = "acked_ns" if self.until_ingested else "sent_ns"
        count, oldest = self._db.execute(
            f"SELECT COUNT(*), MIN(created_ns) FROM records WHERE {column} IS NULL").fetchone()
        age = (time.time_ns() - oldest) / 1e9 if oldest is not None else None
        return int(count), age

    def prune_sent(self, keep: int) -> int:
        """Delete delivered records beyond the newest ``keep``; returns how many went."""
        column = "acked_ns" if self.until_ingested else "sent_ns"
        cur = self._db.execute(
            f"DELETE FROM records WHERE {column} IS NOT NULL AND id <= "
            f"(SELECT id FROM records WHERE {column} IS NOT NULL ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (keep,))
        return int(cur.rowcount)

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA quick_check").fetchone()[0] == "ok")
