"""A read-only report of what an outbox file holds, for ``status``, ``diag`` and the dev tools.

Nothing outside ``agent.storage`` opens ``outbox.db``: readers ask for an :class:`OutboxReport`.
The report opens the file with SQLite's ``mode=ro`` (it never creates, migrates or writes it,
so it is safe beside a running agent) and counts with the queries the :class:`Outbox` itself
uses, so the backlog follows the delivery mode the same way everywhere: with
``delivery = "ingested"`` a record is delivered once ingest acknowledged it, with
``"broker"`` once the broker took it (PUBACK).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.errors import StorageError
from agent.storage.codec import decode, read_dicts
from agent.storage.outbox import (
    MARKED,
    delivered_column,
    disk_footprint,
    quarantined_files,
    query_backlog,
    query_evictions,
    query_last_seqs,
    query_used_bytes,
)

OUTBOX_FILE = "outbox.db"
Delivery = Literal["ingested", "broker"]


def outbox_path(state_dir: Path) -> Path:
    """Where the agent keeps its outbox in ``state_dir``."""
    return state_dir / OUTBOX_FILE


@dataclass(frozen=True)
class ClassCounts:
    """Records of one class (result, event, telemetry...) in the outbox."""

    records: int
    unsent: int  # not yet taken by the broker
    undelivered: int  # not yet delivered in the report's delivery mode


@dataclass(frozen=True)
class Eviction:
    """Undelivered items of one class the disk budget had to drop (kept across restarts)."""

    records: int
    bytes: int


@dataclass(frozen=True)
class OutboxReport:
    """What an outbox file holds, read at one moment."""

    path: Path
    delivery: Delivery
    backlog: int  # records not yet delivered
    oldest_unsent_s: float | None  # age of the oldest of them
    last_seq: Mapping[str, int]
    classes: Mapping[str, ClassCounts]
    evictions: Mapping[str, Eviction]
    blobs_waiting: int
    used_bytes: int  # pages in use in the database file
    file_bytes: int
    disk_bytes: int  # database, WAL, shared memory and reserve files together
    quarantined: tuple[Path, ...]
    integrity: str | None  # SQLite's quick_check ("ok"), when asked for

    @property
    def evicted_records(self) -> int:
        """Undelivered records the budget dropped; blobs (class ``shard``) are not records."""
        return sum(e.records for k, e in self.evictions.items() if k != "shard")


class OutboxUnreadable(StorageError):
    """The outbox file exists but SQLite cannot read it (corrupt, locked, not a database)."""


def quarantined(state_dir: Path) -> tuple[Path, ...]:
    """Corrupt outbox files the agent moved aside in ``state_dir``, oldest first."""
    return tuple(quarantined_files(outbox_path(state_dir)))


def _connect_ro(path: Path) -> sqlite3.Connection:
    """Open read-only: never creates, migrates or writes the file."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _require_marks(conn: sqlite3.Connection) -> None:
    """A file from before schema 3 keeps its marks in the record rows; the agent moves them to
    ``marks`` when it next opens the file, and the report (read-only) cannot."""
    if "marks" not in _tables(conn):
        raise sqlite3.DatabaseError("an outbox from an older agent (schema < 3): start the "
                                    "agent once to migrate it")


def read_report(state_dir: Path, delivery: Delivery = "ingested", *,
                integrity: bool = False) -> OutboxReport | None:
    """Read the outbox in ``state_dir`` without writing it; None when there is none yet.

    ``integrity`` runs SQLite's quick_check too (it reads the whole file). Raises
    :class:`OutboxUnreadable` when the file cannot be read as an outbox.
    """
    path = outbox_path(state_dir)
    if not path.exists():
        return None
    until_ingested = delivery == "ingested"
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            check = str(conn.execute("PRAGMA quick_check").fetchone()[0]) if integrity else None
            tables = _tables(conn)
            if "records" not in tables:
                raise sqlite3.DatabaseError("no records table (not an outbox, or never written)")
            _require_marks(conn)
            backlog, oldest = query_backlog(conn, until_ingested)
            last_seq = query_last_seqs(conn) if "streams" in tables else {}
            column = delivered_column(until_ingested)
            classes = {str(k): ClassCounts(int(n), int(u), int(d)) for k, n, u, d in conn.execute(
                f"SELECT r.class, COUNT(*), COUNT(*) - COUNT(m.sent_ns), COUNT(*) - "
                f"COUNT({column}) FROM {MARKED} GROUP BY r.class ORDER BY r.class")}
            evictions = {k: Eviction(n, b) for k, (n, b) in sorted(
                query_evictions(conn).items())} if "evictions" in tables else {}
            blobs = int(conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]) \
                if "blobs" in tables else 0
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            used, file = query_used_bytes(conn, page)
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path),
                               fix="restart the agent: it moves a corrupt file aside and starts "
                                   "a fresh one") from exc
    age = (time.time_ns() - oldest) / 1e9 if oldest is not None else None
    return OutboxReport(path=path, delivery=delivery, backlog=backlog, oldest_unsent_s=age,
                        last_seq=last_seq, classes=classes, evictions=evictions,
                        blobs_waiting=blobs, used_bytes=used, file_bytes=file,
                        disk_bytes=disk_footprint(path), quarantined=quarantined(state_dir),
                        integrity=check)


def records_pending(state_dir: Path, delivery: Delivery = "ingested") -> set[tuple[str, int]]:
    """(stream, seq) of every record the outbox still holds undelivered; empty without one.

    For the dev tools and tests that compare what is left against what ingest stored."""
    path = outbox_path(state_dir)
    if not path.exists():
        return set()
    column = delivered_column(delivery == "ingested")
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            _require_marks(conn)
            return {(str(s), int(q)) for s, q in conn.execute(
                f"SELECT r.stream, r.seq FROM {MARKED} WHERE {column} IS NULL")}
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc


def integrity_check(state_dir: Path) -> str:
    """SQLite's full integrity check of the outbox ("ok" when sound), read-only. Slower than the
    report's quick_check: it also checks every index against its table."""
    path = outbox_path(state_dir)
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc


def record_payloads(state_dir: Path, stream: str) -> dict[int, bytes]:
    """seq -> payload (as appended: decompressed) of the records one stream still has in the
    outbox; for tests that compare them with what ingest stored."""
    path = outbox_path(state_dir)
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            dicts = read_dicts(conn)
            return {int(q): decode(bytes(p), dicts) for q, p in conn.execute(
                "SELECT seq, payload FROM records WHERE stream = ?", (stream,))}
    except (sqlite3.Error, ValueError) as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc


def record_seqs(state_dir: Path, stream: str | None = None) -> list[int]:
    """The seqs of the records the outbox holds (of one stream, or all), in seq order; empty
    without an outbox. For tests that check seqs are never reused or skipped."""
    path = outbox_path(state_dir)
    if not path.exists():
        return []
    where, args = ("WHERE stream = ?", (stream,)) if stream is not None else ("", ())
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            return [int(r[0]) for r in conn.execute(
                f"SELECT seq FROM records {where} ORDER BY seq", args)]
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc
