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
    ACKED_ATTR,
    EPOCH_2024,
    MARKED,
    SENT,
    delivered_column,
    disk_footprint,
    quarantined_files,
    query_backlog,
    query_evictions,
    query_last_seqs,
    query_used_bytes,
    side_files,
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
                f"SELECT r.class, COUNT(*), COUNT(*) - COUNT({SENT}), COUNT(*) - "
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


# -- the web console's reads (agent/service/web) -------------------------------------------------

@dataclass(frozen=True)
class StoredPayload:
    """One record the outbox still holds, decoded: its class's JSON payload and when it was
    committed (ns since the epoch)."""

    stream: str
    seq: int
    created_ns: int
    payload: bytes


def _payloads(state_dir: Path, kind: str, since_ns: int, limit: int,
              newest_first: bool) -> list[StoredPayload]:
    path = outbox_path(state_dir)
    if not path.exists():
        return []
    order = "DESC" if newest_first else "ASC"
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            dicts = read_dicts(conn)
            # records' primary key is commit order, so id order is created_ns order
            rows = conn.execute(
                f"SELECT stream, seq, created_ns, payload FROM records WHERE class = ? AND "
                f"created_ns >= ? ORDER BY id {order} LIMIT ?", (kind, since_ns, limit)).fetchall()
            return [StoredPayload(str(s), int(q), int(c), decode(bytes(p), dicts))
                    for s, q, c, p in rows]
    except (sqlite3.Error, ValueError) as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc


def read_counts(state_dir: Path, since_s: float, limit: int = 20_000) -> list[StoredPayload]:
    """The count records (``lepton.count`` payloads) committed in the last ``since_s``
    seconds that the outbox still holds (delivered ones are kept up to ``[outbox]
    keep_delivered``), the newest ``limit`` of them, oldest first; empty without an outbox."""
    since_ns = time.time_ns() - int(since_s * 1e9)
    return _payloads(state_dir, "count", since_ns, limit, newest_first=True)[::-1]


def read_events(state_dir: Path, limit: int = 100) -> list[StoredPayload]:
    """The newest ``limit`` track-event records (``lepton.event`` payloads), newest first."""
    return _payloads(state_dir, "event", 0, limit, newest_first=True)


def read_blob(state_dir: Path, blob: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of a blob (a snapshot) the outbox still holds whole, else None."""
    path = outbox_path(state_dir)
    if not path.exists():
        return None
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            row = conn.execute("SELECT content_type, size, chunk_count FROM blobs WHERE blob = ?",
                               (blob,)).fetchone()
            if row is None:
                return None
            chunks = [bytes(d) for (d,) in conn.execute(
                "SELECT data FROM blob_chunks WHERE blob = ? ORDER BY idx", (blob,))]
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc
    data = b"".join(chunks)
    if len(chunks) != int(row[2]) or len(data) != int(row[1]):
        return None  # partly sent and pruned: not whole any more
    return str(row[0]), data


@dataclass(frozen=True)
class DeliveryMarks:
    """When the broker last acknowledged a record (PUBACK, marked sent) and when ingest last
    acknowledged one, as ns since the epoch (None: never, or no longer in the outbox)."""

    last_puback_ns: int | None
    last_ingest_ack_ns: int | None


def read_delivery_marks(state_dir: Path) -> DeliveryMarks:
    """The newest sent and acked marks of the records the outbox holds."""
    path = outbox_path(state_dir)
    if not path.exists():
        return DeliveryMarks(None, None)
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            _require_marks(conn)
            sent, acked = conn.execute("SELECT MAX(sent_ns), MAX(acked_ns) FROM marks").fetchone()
            # Records below the delivered watermark have no marks row: when it last moved.
            moved = int(conn.execute(f"PRAGMA {ACKED_ATTR}").fetchone()[0])
            if moved:
                at = (moved + EPOCH_2024) * 10**9
                sent, acked = max(sent or 0, at), max(acked or 0, at)
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc
    return DeliveryMarks(int(sent) if sent is not None else None,
                         int(acked) if acked is not None else None)


def read_state(state_dir: Path, key: str) -> str | None:
    """What the agent last committed under ``key`` (``Outbox.read_state``), read-only; None
    when there is no outbox or no such key."""
    path = outbox_path(state_dir)
    if not path.exists():
        return None
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            row = conn.execute("SELECT value FROM pipeline_state WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc
    return None if row is None else str(row[0])


def read_all_state(state_dir: Path) -> dict[str, str]:
    """Everything the agent committed with its records (``Outbox.read_state``'s keys), read-only,
    also on a read-only filesystem: SQLite cannot make the WAL index there, so a file closed
    cleanly (no WAL left) is read as immutable. Empty when there is no outbox."""
    path = outbox_path(state_dir)
    if not path.exists():
        return {}
    query = "SELECT key, value FROM pipeline_state"
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            return {str(k): str(v) for k, v in conn.execute(query)}
    except sqlite3.Error as exc:
        if side_files(path)[0].exists():
            raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1",
                                                uri=True)) as conn:
            return {str(k): str(v) for k, v in conn.execute(query)}
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc


def blobs_present(state_dir: Path, blobs: list[str]) -> set[str]:
    """Which of ``blobs`` the outbox still holds (their snapshots can be shown)."""
    path = outbox_path(state_dir)
    if not path.exists() or not blobs:
        return set()
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            marks = ",".join("?" * len(blobs))
            return {str(b) for (b,) in conn.execute(
                f"SELECT blob FROM blobs WHERE blob IN ({marks})", blobs)}
    except sqlite3.Error as exc:
        raise OutboxUnreadable(f"unreadable: {exc}", path=str(path)) from exc
