"""The durable outbox: every record is committed here before it is published.

A record goes unsent -> sent (the broker's PUBACK) -> ingested (the backend's ack on the
``ack`` topic). With ``delivery = "ingested"`` a record sent but not acknowledged within
the ack timeout goes back to unsent and is published again (ingest dedupes).

**Disk budget.** One budget in bytes covers everything the outbox keeps on disk: the database
file (records of every class and blob chunks, see ``agent.storage.blobs``), its WAL and shared
memory files and the reserve file. The budget is split: the reserve, the WAL's allowance
(``journal_size_limit``, checkpoints at half of it), the shared memory index, and the rest for
the database file, which SQLite itself keeps from growing beyond it (``max_page_count``).
After each committed batch the outbox measures the pages in use; over the eviction target
(the file's share less an eighth of headroom for the next batch) it deletes delivered records
first, then undelivered ones, lowest priority first and oldest first, and counts every
undelivered record it had to drop by class (kept in the file, so the counts survive
restarts). A batch larger than the headroom meets the page cap, makes room and is retried.
Then it sums the files' sizes (``os.stat``) and, over the budget, checkpoints and truncates
the WAL, so the footprint on disk is within the budget after every batch.

**Durability.** SQLite in WAL mode with ``synchronous=NORMAL``; commits are grouped by the
caller (``commit_interval_ms``) and the WAL is fsynced every ``durability_interval_s``. A crash
or SIGKILL of the agent loses nothing committed; a power cut loses at most the commits of the
last durability interval. ``durability_interval_s = 0`` fsyncs every commit
(``synchronous=FULL``), for hardware that does not mind.

Sequence numbers are assigned in the same transaction as the insert, so a seq is never reused
across restarts. A corrupt file found at start is moved aside (``outbox.db.corrupt-<time>``)
and a fresh one started whose sequence numbers begin above any the old one can have issued.
After a power cut (the outbox was open in an earlier boot and never closed), the commits of
the last durability interval may be gone although their records were published: every
stream's seqs then continue ``POWER_LOSS_SEQ_GAP`` higher, so no published seq is reused.

**Writes to the card** (docs/durability.md, ``bench sync``). What a commit writes is whole
pages, so the layout keeps each commit's pages few and small: 512-byte pages (new files), no
per-commit counter rows (seqs and ids are read back from the records at open; the ``streams``
row is written by a trigger only when records are deleted), sent/acked state in a narrow
``marks`` table rather than rewriting the record rows, held in memory until the next write
transaction (the outbox's own queries count them at once; a crash only republishes), the
eviction index only over the rare classes (results are evicted in id order, which is their
age), payloads compressed at rest with a dictionary per class (``agent.storage.codec``),
``secure_delete=FAST`` and delivered records pruned in steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from agent.core.contract.ack import to_ranges
from agent.core.outbox import DEFAULT_PRIORITIES
from agent.errors import StorageError
from agent.storage import codec as codec_mod
from agent.storage.mounts import free_bytes

log = logging.getLogger("agent.outbox")
T = TypeVar("T")

SCHEMA_VERSION = 3
# New files: a commit of one or two records writes a few pages, so the page is the unit of
# wear (bench sync, live camera at 50 ms commits: 4096 -> 512 bytes took 22.4x -> 5.3x of
# the payload; the batched figure does not depend on it).
PAGE_SIZE = 512
SECURE_DELETE = "FAST"
# Seqs skipped after a power cut: far more than a durability interval can commit.
POWER_LOSS_SEQ_GAP = 1 << 20
# Bytes SQLite spends per row beyond the payload (row header, index entries), for estimates.
ROW_OVERHEAD = 96
SHM_BYTES = 32 * 1024  # the WAL index grows by 32 KiB per 4062 WAL frames
# Sent/acked marks held in memory before they are written on their own: a live camera's ride
# on its next commit long before this many; a drain (thousands a second) writes them a few
# hundred at a time, as the uplink's window-sized flushes did, and the queries that leave
# the held ids out stay cheap (fetch_unsent of 100 with 3,700 held: 2.2 ms).
MARKS_HELD = 256
# ... and written on their own at the latest this long after the last write transaction.
MARKS_IDLE_S = 5.0

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
-- State a pipeline commits with its records (the analytics' open count bucket, the frame a file
-- source reached), so a restart resumes exactly where the committed records end.
CREATE TABLE IF NOT EXISTS pipeline_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Ids are given by the outbox (above every id the file has held: meta 'id_floor' is raised
-- before rows are deleted), so no AUTOINCREMENT counter row is written per commit.
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    class TEXT NOT NULL DEFAULT 'result',
    priority INTEGER NOT NULL DEFAULT 60,
    UNIQUE (stream, seq)
);
-- Sent (PUBACK) and acked (ingest) state outside the record rows: marking a batch rewrites a
-- page of 20-byte rows, not the pages of the records.
CREATE TABLE IF NOT EXISTS marks (id INTEGER PRIMARY KEY, sent_ns INTEGER, acked_ns INTEGER);
-- Results are evicted oldest (lowest id) first, by the table's own order; only the other
-- classes need an index for "lowest priority, then oldest".
CREATE INDEX IF NOT EXISTS records_eviction_rare ON records (priority, id)
    WHERE class != 'result';
-- A stream's last seq is read back from its records at open; a delete keeps it in streams.
CREATE TRIGGER IF NOT EXISTS records_deleted AFTER DELETE ON records BEGIN
    INSERT INTO streams (stream, last_seq) VALUES (old.stream, old.seq)
        ON CONFLICT (stream) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq);
    INSERT INTO meta (key, value) VALUES ('id_floor', old.id)
        ON CONFLICT (key) DO UPDATE SET value =
            max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER));
    DELETE FROM marks WHERE id = old.id;
END;
CREATE TABLE IF NOT EXISTS evictions (
    class TEXT PRIMARY KEY, records INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    blob TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER,
    meta TEXT NOT NULL,
    manifest_sent_ns INTEGER
);
CREATE TABLE IF NOT EXISTS blob_chunks (
    blob TEXT NOT NULL REFERENCES blobs (blob) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    sent_ns INTEGER,
    PRIMARY KEY (blob, idx)
) WITHOUT ROWID;
-- Chunks sent (PUBACK), outside the chunk rows: marking a 64 KiB chunk in its row rewrote the
-- row and its overflow pages (snapshots measured 5.3x their size written, 2.1x without).
CREATE TABLE IF NOT EXISTS chunk_sent (
    blob TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sent_ns INTEGER NOT NULL,
    PRIMARY KEY (blob, idx)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS blob_chunks_deleted AFTER DELETE ON blob_chunks BEGIN
    DELETE FROM chunk_sent WHERE blob = old.blob AND idx = old.idx;
END;
""" + codec_mod.DDL


class CorruptDatabase(sqlite3.DatabaseError):
    """The file opened but failed SQLite's integrity check."""


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk, or the database file's page cap (``max_page_count``)."""
    name = getattr(exc, "sqlite_errorname", "")
    return name == "SQLITE_FULL" if name else "full" in str(exc).lower()


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (to quarantine), as opposed to a full disk or missing permissions."""
    if isinstance(exc, CorruptDatabase):
        return True
    name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


@dataclass(frozen=True)
class PendingRecord:
    """A record to append: its payload is built once its seq is known."""

    stream: str
    topic: str
    build: Callable[[int], bytes]
    qos: int = 1
    kind: str = "result"


class StoredRecord(NamedTuple):
    """A committed record as the uplink publishes it (a tuple: made per record per publish)."""

    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True)
class Usage:
    """What the outbox file holds against its budget."""

    used_bytes: int
    file_bytes: int
    wal_bytes: int
    budget_bytes: int | None
    disk_bytes: int = 0  # the database, WAL, shared memory and reserve files together


def _disk_size(path: Path) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0
    return max(st.st_size, st.st_blocks * 512)


# Queries the outbox and its read-only report (agent.storage.report) share, so that both
# count the backlog, the footprint and the evictions the same way.

# Every record below this id is sent and acknowledged by ingest (the "delivered watermark"):
# kept in the database header's user_version, on page 1, which a commit that adds records
# rewrites anyway, instead of a marks row per record. A live camera's records are acked in
# order, so its commits write no marks pages at all: 2.48x -> 1.7x of the payload (bench sync
# live, default settings); marks rows remain for what is acked out of order.
BELOW = "(SELECT user_version FROM pragma_user_version)"
# A record's sent and acked times (ns) as its marks row has them, 0 below the watermark.
SENT = f"(CASE WHEN r.id < {BELOW} THEN 0 ELSE m.sent_ns END)"
ACKED = f"(CASE WHEN r.id < {BELOW} THEN 0 ELSE m.acked_ns END)"
ACKED_ATTR = "application_id"  # page 1 too: when the watermark last moved, s since EPOCH_2024
EPOCH_2024 = 1_704_067_200


def delivered_column(until_ingested: bool) -> str:
    """The expression over ``MARKED`` (records ``r``, marks ``m``) that is not NULL once a
    record counts as delivered in the delivery mode."""
    return ACKED if until_ingested else SENT


# Records with their marks: every query about delivery reads records through this.
MARKED = "records r LEFT JOIN marks m ON m.id = r.id"


def query_backlog(db: sqlite3.Connection, until_ingested: bool,
                  held: str = "[]") -> tuple[int, int | None]:
    """Records not yet delivered, and the oldest one's ``created_ns``; ``held``: a JSON array
    of ids delivered by marks the outbox holds in memory (not yet in the file)."""
    count, oldest = db.execute(
        f"SELECT COUNT(*), MIN(r.created_ns) FROM {MARKED} "
        f"WHERE {delivered_column(until_ingested)} IS NULL AND r.id NOT IN "
        "(SELECT value FROM json_each(?))", (held,)).fetchone()
    return int(count), None if oldest is None else int(oldest)


def query_last_seqs(db: sqlite3.Connection) -> dict[str, int]:
    """The last seq given to each stream: the larger of what ``streams`` kept (records since
    deleted) and the records themselves (a commit writes no counter row)."""
    seqs = {str(s): int(q) for s, q in db.execute("SELECT stream, last_seq FROM streams")}
    for stream, top in db.execute("SELECT stream, MAX(seq) FROM records GROUP BY stream"):
        seqs[str(stream)] = max(seqs.get(str(stream), 0), int(top))
    return seqs


def query_evictions(db: sqlite3.Connection) -> dict[str, list[int]]:
    """Undelivered items the budget evicted, by class: [records, bytes]."""
    return {str(c): [int(n), int(b)] for c, n, b in
            db.execute("SELECT class, records, bytes FROM evictions")}


def query_used_bytes(db: sqlite3.Connection, page: int) -> tuple[int, int]:
    """Bytes of the pages in use, and of the whole database file, by SQLite's count."""
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page, pages * page


def side_files(path: Path) -> tuple[Path, Path, Path]:
    """The WAL, shared memory and reserve files that go with the database at ``path``."""
    return (Path(str(path) + "-wal"), Path(str(path) + "-shm"),
            path.with_name(path.name + ".reserve"))


def disk_footprint(path: Path) -> int:
    """What the outbox at ``path`` takes from the disk: its database, WAL, shared memory and
    reserve files, by ``os.stat`` (the larger of size and allocated blocks)."""
    return sum(_disk_size(p) for p in (path, *side_files(path)))


def quarantined_files(path: Path) -> list[Path]:
    """Corrupt outbox files moved aside at start (``outbox.db.corrupt-<time>``), oldest first."""
    return sorted(q for q in path.parent.glob(f"{path.name}.corrupt-*")
                  if not q.name.endswith(("-wal", "-shm")))


def boot_id() -> str | None:
    """This boot's id (Linux), to tell a power cut from a crash of the agent alone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def time_seq_floor() -> int:
    """A seq floor from the clock (ms x 1000): above any seq an outbox of this device gave out
    by counting, or from an earlier floor, unless it issued over 1,000 records a millisecond."""
    return int(time.time() * 1000) * 1000


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)  # fsync flushes the file, whichever descriptor names it
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Driver:
    """How the outbox reaches SQLite and the disk. The default is Python's sqlite3 and
    os.fsync; the power-cut test (agent.storage.powercut) swaps in a connection over a VFS
    that records every write and sync, so the outbox's own code runs over it."""

    connect: Callable[[Path], sqlite3.Connection] = _connect
    fsync: Callable[[Path], None] = _fsync_file
    boot_id: Callable[[], str | None] = boot_id


class Outbox:
    """One SQLite outbox file; used from one thread (the event loop)."""

    def __init__(self, path: Path, *, until_ingested: bool = True, budget_bytes: int | None = None,
                 priorities: Mapping[str, int] | None = None,
                 durability_interval_s: float = 1.0, compress: bool = True,
                 driver: Driver | None = None, fresh_seq_floor: bool = False) -> None:
        """``fresh_seq_floor``: every stream's seqs continue above a floor taken from the clock
        (as after a quarantine), so that none collides with a seq another outbox of the same
        device gave out: for the volatile outbox of an agent whose state directory cannot be
        written (agent.storage.volatile)."""
        self.path = path
        self.driver = driver or Driver()
        self.compress = compress
        self.power_loss = False  # this open found the file left open by an earlier boot
        self._next_id = 1
        self.until_ingested = until_ingested
        self.budget_bytes = budget_bytes
        self.priorities = {**DEFAULT_PRIORITIES, **(priorities or {})}
        self.durability_interval_s = durability_interval_s
        self.quarantined: Path | None = None
        self.wal, self.shm, self.reserve = side_files(path)
        self.reserve_bytes = (min(max(budget_bytes // 64, 64 * 1024), 4 * 1024 * 1024,
                                  budget_bytes // 8) if budget_bytes else 1024 * 1024)
        # The database file's share of the budget (set in _open) and the eviction target.
        self.file_cap_bytes: int | None = None
        self.target_bytes: int | None = budget_bytes
        self.evictions: dict[str, list[int]] = {}
        self.wal_truncations = 0  # checkpoints forced by the footprint: rare when the split fits
        self._last_fsync = time.monotonic()
        self._last_eviction_log = -1e9
        # Sent (PUBACK) and acked (ingest) marks not yet in the file, id -> time (see
        # mark_sent): written at the start of the next write transaction.
        self._sent_marks: dict[int, int] = {}
        self._acked_marks: dict[int, int] = {}
        self._last_write = time.monotonic()
        self._write_failed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory: {exc.strerror}",
                               path=str(path.parent),
                               fix="pass --state-dir with a writable directory") from exc
        try:
            self._db = self._open(seq_floor=time_seq_floor() if fresh_seq_floor else 0)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise self._open_error(exc) from exc
            self._quarantine(exc)
            try:
                self._db = self._open(seq_floor=time_seq_floor())
            except sqlite3.DatabaseError as again:
                raise self._open_error(again) from again
        self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self.codec = codec_mod.Codec(self._db, enabled=compress)
        self._fit_file()
        self._make_reserve()

    def _open_error(self, exc: Exception) -> StorageError:
        return StorageError(f"cannot open outbox database: {exc}", path=str(self.path),
                            fix="check the state directory is writable and has free space")

    def _open(self, seq_floor: int = 0) -> sqlite3.Connection:
        db = self.driver.connect(self.path)
        try:
            # Takes effect only on a new file (before its first table).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=" + ("FULL" if self.durability_interval_s == 0
                                                 else "NORMAL"))
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(f"PRAGMA secure_delete={SECURE_DELETE}")
            if self.budget_bytes:
                self._plan_budget(db, self.budget_bytes)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise CorruptDatabase(f"integrity check failed: {check}")
            self._migrate(db)
            if seq_floor:
                self._raise_seq_floor(db, seq_floor)
            self._power_cut_check(db)
            meta = dict(db.execute("SELECT key, value FROM meta"))
            self._seq_floor = int(meta.get("seq_floor", 0))
            self._last_seq = query_last_seqs(db)
            self._next_id = 1 + max(int(meta.get("id_floor", 0)), int(db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]), self._old_sequence(db))
            self.evictions = query_evictions(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _raise_seq_floor(db: sqlite3.Connection, floor: int) -> None:
        """New streams' seqs begin above ``floor``, and streams the file has continue above it
        (a gap, as after a power cut: ingest only needs seqs never reused)."""
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO meta (key, value) VALUES ('seq_floor', ?) ON CONFLICT (key) DO "
                   "UPDATE SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS "
                   "INTEGER))", (str(floor),))
        for stream, last in query_last_seqs(db).items():
            if last < floor:
                db.execute("INSERT INTO streams (stream, last_seq) VALUES (?, ?) ON CONFLICT "
                           "(stream) DO UPDATE SET last_seq = excluded.last_seq", (stream, floor))
        db.execute("COMMIT")

    @staticmethod
    def _old_sequence(db: sqlite3.Connection) -> int:
        """The AUTOINCREMENT counter of a file from before schema 3 (0 if none)."""
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0]) if row else 0

    def _power_cut_check(self, db: sqlite3.Connection) -> None:
        """The file records the boot it is open in, durably, and forgets it at a clean close.
        Found open from another boot, the machine lost power (or crashed) with the outbox open:
        commits since the last fsync may be gone though their records were published, so every
        stream's seqs (and new streams') continue ``POWER_LOSS_SEQ_GAP`` higher. A crash of the
        agent alone (same boot) loses no commit, and seqs continue without a gap."""
        meta = dict(db.execute("SELECT key, value FROM meta"))
        here = self.driver.boot_id() or "unknown"
        was = meta.get("open_in_boot")
        if was is not None and (was != here or here == "unknown"):
            self.power_loss = True
            db.execute("BEGIN IMMEDIATE")
            for stream, last in query_last_seqs(db).items():
                db.execute("INSERT INTO streams (stream, last_seq) VALUES (?, ?) ON CONFLICT "
                           "(stream) DO UPDATE SET last_seq = excluded.last_seq",
                           (stream, last + POWER_LOSS_SEQ_GAP))
            floor = int(meta.get("seq_floor", 0)) + POWER_LOSS_SEQ_GAP
            db.execute("INSERT OR REPLACE INTO meta VALUES ('seq_floor', ?)", (str(floor),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('open_in_boot', ?)", (here,))
            db.execute("COMMIT")
            log.warning("%s was open when the machine stopped (power cut?): seqs continue %d "
                        "higher so that none published before the cut is reused", self.path,
                        POWER_LOSS_SEQ_GAP)
        elif was != here:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('open_in_boot', ?)", (here,))
        else:
            return
        # Durable before any seq of this run is published.
        self.driver.fsync(Path(str(self.path) + "-wal"))

    def _plan_budget(self, db: sqlite3.Connection, budget: int) -> None:
        """Split the budget between the reserve, the WAL, its index and the database file."""
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        wal = max(budget // 8, 8 * page)
        shm = SHM_BYTES * (1 + wal // page // 4000)
        cap_pages = max(16, (budget - self.reserve_bytes - wal - shm) // page)
        db.execute(f"PRAGMA wal_autocheckpoint={max(4, wal // 4 // page)}")
        db.execute(f"PRAGMA journal_size_limit={wal}")
        self.file_cap_bytes = cap_pages * page
        self.target_bytes = self.file_cap_bytes - max(self.file_cap_bytes // 8, 2 * page)
        # SQLite never sets the cap below the file's size: a file from a larger budget is
        # shrunk first (evict, then VACUUM), once, in _fit_file.
        db.execute(f"PRAGMA max_page_count={cap_pages}")

    def _fit_file(self) -> None:
        """A file larger than its share of the budget (the budget was lowered): evict down to
        the target and rebuild it smaller."""
        if self.file_cap_bytes is None or self.usage().file_bytes <= self.file_cap_bytes:
            return
        self.enforce_budget()
        try:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute(f"PRAGMA max_page_count={self.file_cap_bytes // self._page}")
        except sqlite3.OperationalError as exc:
            log.warning("could not shrink %s to its budget (%s); it shrinks as records go",
                        self.path, exc)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
        if columns and "class" not in columns:  # schema 1: results only
            db.execute("ALTER TABLE records ADD COLUMN class TEXT NOT NULL DEFAULT 'result'")
            db.execute("ALTER TABLE records ADD COLUMN priority INTEGER NOT NULL DEFAULT 60")
        db.executescript(_DDL)  # every statement IF NOT EXISTS: a rerun after a crash is fine
        db.execute("BEGIN IMMEDIATE")
        try:
            if "sent_ns" in columns:  # schema 1-2: marks in the record rows
                db.execute("INSERT OR IGNORE INTO marks (id, sent_ns, acked_ns) SELECT id, "
                           "sent_ns, acked_ns FROM records WHERE sent_ns IS NOT NULL OR "
                           "acked_ns IS NOT NULL")
                db.execute("UPDATE records SET sent_ns = NULL, acked_ns = NULL WHERE "
                           "sent_ns IS NOT NULL OR acked_ns IS NOT NULL")
                for index in ("records_unsent", "records_unacked", "records_eviction"):
                    db.execute(f"DROP INDEX IF EXISTS {index}")
                db.execute("INSERT OR IGNORE INTO chunk_sent (blob, idx, sent_ns) SELECT blob, "
                           "idx, sent_ns FROM blob_chunks WHERE sent_ns IS NOT NULL")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _quarantine(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():  # never overwrite a file kept earlier in the same second
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(target) + suffix))
        self.quarantined = target
        log.error("OUTBOX CORRUPT: %s is unreadable (%s); moved it to %s and started a fresh "
                  "outbox. Records it held that were not yet delivered are not sent; keep the "
                  "file for a support bundle.", self.path, exc, target)

    def close(self) -> None:
        """Write the marks held, forget this boot in the file (a clean stop: the next open
        continues the seqs without a gap) and close."""
        with contextlib.suppress(sqlite3.Error, StorageError):
            self.flush_marks()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("DELETE FROM meta WHERE key = 'open_in_boot'")
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    def priority(self, kind: str) -> int:
        return self.priorities.get(kind, self.priorities["result"])

    def last_seq(self, stream: str) -> int:
        return int(self._last_seq.get(stream, self._seq_floor))

    def append(self, records: Iterable[PendingRecord],
               state: Mapping[str, str] | None = None) -> list[StoredRecord]:
        """Assign seqs and commit the records in one transaction, with ``state`` (key -> text,
        read back with :meth:`read_state`) in the same transaction; returns them as stored (those
        the disk budget evicted within the same call left out), so the uplink can publish them
        without reading them back.

        On a full disk the outbox frees its reserve file (so that SQLite can write the WAL
        frames a delete needs), makes room within its own file as if over budget, and tries
        once more before raising StorageError; the caller keeps the records and retries later.
        """
        batch = list(records)
        try:
            return self._append(batch, state)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise self._commit_error(exc) from exc
            self.reserve.unlink(missing_ok=True)
            # Move the WAL into the database file first, while the freed reserve has room for
            # it: the deletes below append to the WAL, and a WAL that has never been
            # checkpointed (a small disk, a budget larger than it) can hold most of the data.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            try:
                freed = self.make_room(max(self.usage().used_bytes // 10, self.reserve_bytes))
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                log.error("disk full at %s while committing %d record(s); evicted %d item(s) "
                          "from the outbox to make room", self.path.parent, len(batch), freed)
                stored = self._append(batch, state)
            except sqlite3.Error as again:
                raise self._commit_error(again) from again
            self._make_reserve()
            return stored
        except sqlite3.Error as exc:
            raise self._commit_error(exc) from exc

    def _make_reserve(self) -> None:
        """Keep ``reserve_bytes`` of disk in a file beside the outbox, released on a full disk.

        Best effort: it takes at most half the space still free, so that re-creating it after
        a full disk does not fill the disk again."""
        if self.reserve_bytes <= 0 or (self.reserve.exists()
                                       and self.reserve.stat().st_size >= self.reserve_bytes):
            return
        try:
            free = free_bytes(self.path.parent)
            with self.reserve.open("ab") as f:
                missing = min(self.reserve_bytes - f.tell(), free // 2)
                while missing > 0:
                    n = min(missing, 64 * 1024)
                    f.write(b"\0" * n)
                    f.flush()
                    missing -= n
        except OSError:
            pass

    def _commit_error(self, exc: Exception) -> StorageError:
        if isinstance(exc, sqlite3.IntegrityError):  # our seqs are taken: not a disk problem
            return StorageError(f"cannot commit records: {exc}; another process has written "
                                "to this outbox", path=str(self.path),
                                fix="run one agent per state directory and nothing else "
                                    "that writes its outbox.db")
        return StorageError(f"cannot commit records: {exc}", path=str(self.path),
                            fix="free space on the state directory's filesystem or lower "
                                "[outbox] budget_bytes")

    def read_state(self, key: str) -> str | None:
        """What the last :meth:`append` committed under ``key`` (None: never written)."""
        row = self._db.execute("SELECT value FROM pipeline_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _append(self, batch: list[PendingRecord],
                state: Mapping[str, str] | None = None) -> list[StoredRecord]:
        if not batch:
            if state:
                with self.transaction():
                    self._write_state(state)
            return []
        now = time.time_ns()
        seqs = dict(self._last_seq)
        first = self._next_id
        stored = []
        for i, rec in enumerate(batch):
            seq = seqs.get(rec.stream, self._seq_floor) + 1
            seqs[rec.stream] = seq
            stored.append(StoredRecord(first + i, rec.stream, seq, rec.topic, rec.build(seq),
                                       rec.qos))

        def insert() -> None:
            # One executemany per batch: each call into SQLite gives up the GIL and waits to
            # get it back from the capture and inference threads; per-row calls cost ~5x more
            # (bench sync, measured when paho still had a thread of its own). No counter row
            # is written: the seqs and ids are in the records (see query_last_seqs).
            with self.transaction():
                kinds = [rec.kind for rec in batch]
                payloads = self.codec.encode_batch(kinds, [r.payload for r in stored])
                self._db.executemany(
                    "INSERT INTO records (id, stream, seq, topic, payload, qos, created_ns, "
                    "class, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.id, r.stream, r.seq, r.topic, p, r.qos, now, k, self.priority(k))
                     for r, p, k in zip(stored, payloads, kinds, strict=True)])
                if state:
                    self._write_state(state)

        self.write_within_budget(insert, sum(len(r.payload) + ROW_OVERHEAD for r in stored))
        self._next_id = first + len(stored)
        self._last_seq = seqs
        evicted = self.enforce_budget()
        self.maybe_fsync()
        if evicted:  # the budget may have taken some of these already
            return self.fetch_ids([r.id for r in stored])
        return stored

    def adopt_state(self, state: Mapping[str, str]) -> int:
        """Take the keys this file has no value for from ``state`` (another outbox's, e.g. the
        real one a volatile outbox stands in for: file positions, count buckets, OTA state), in
        one transaction; returns how many were new."""
        with self.transaction():
            have = {str(k) for (k,) in self._db.execute("SELECT key FROM pipeline_state")}
            new = {k: v for k, v in state.items() if k not in have}
            self._write_state(new)
        return len(new)

    def _write_state(self, state: Mapping[str, str]) -> None:
        self._db.executemany(
            "INSERT INTO pipeline_state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", list(state.items()))

    def maybe_fsync(self, force: bool = False) -> None:
        """Make the commits so far survive a power cut, once per durability interval."""
        if self.durability_interval_s == 0:
            return
        now = time.monotonic()
        if not force and now - self._last_fsync < self.durability_interval_s:
            return
        self._last_fsync = now
        self.driver.fsync(self.wal)

    # -- budget --------------------------------------------------------------------------

    def usage(self) -> Usage:
        used, file = query_used_bytes(self._db, self._page)
        return Usage(used, file, _disk_size(self.wal), self.budget_bytes, self.disk_bytes())

    def disk_bytes(self) -> int:
        """What the outbox takes from the disk: its database, WAL, shared memory and reserve
        files, by ``os.stat`` (the larger of size and allocated blocks)."""
        return disk_footprint(self.path)

    def bound_footprint(self) -> None:
        """Over the budget on disk (the WAL grew past its allowance within a large batch):
        checkpoint and truncate the WAL."""
        if self.budget_bytes and self.disk_bytes() > self.budget_bytes:
            self.wal_truncations += 1
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def write_within_budget(self, write: Callable[[], T], nbytes: int) -> T:
        """Run a write transaction; when it meets the database file's share of the budget
        (SQLite's page cap, SQLITE_FULL with the file at its cap), evict and try again, making
        more room each time. A full disk, or a write larger than the budget, raises."""
        for attempt in range(8):
            try:
                return write()
            except sqlite3.OperationalError as exc:
                if not (_is_full(exc) and self.at_page_cap(nbytes)) or attempt == 7:
                    raise
                if self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM records) AND "
                                    "NOT EXISTS (SELECT 1 FROM blobs)").fetchone()[0]:
                    raise
                self.make_room(max(nbytes, self._page * 4) << attempt)
        raise AssertionError("unreachable")

    def at_page_cap(self, nbytes: int) -> bool:
        """Whether SQLITE_FULL on a write of about ``nbytes`` is the file's page cap rather
        than the disk: the filesystem has plenty of room, or the write (rows take more pages
        than their payload) could reach the cap."""
        if self.file_cap_bytes is None:
            return False
        try:
            if free_bytes(self.path.parent) > 4 * nbytes + 4 * 1024 * 1024:
                return True
        except OSError:
            pass
        return self.usage().used_bytes + 2 * nbytes >= self.file_cap_bytes - 4 * self._page

    def enforce_budget(self) -> int:
        """Evict until the pages in use fit the eviction target; returns undelivered items
        evicted."""
        if not self.budget_bytes or self.target_bytes is None:
            return 0
        evicted = 0
        for _ in range(256):
            excess = self.usage().used_bytes - self.target_bytes
            if excess <= 0:
                break
            if self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM records) AND "
                                "NOT EXISTS (SELECT 1 FROM blobs)").fetchone()[0]:
                log.error("outbox over its budget by %d bytes with nothing left to evict; "
                          "raise [outbox] budget_bytes", excess)
                break
            # Freed rows free whole pages only once neighbours go too: evict in steps.
            evicted += self.make_room(max(excess, 16 * 1024))
        now = time.monotonic()
        if evicted and now - self._last_eviction_log > 30:
            self._last_eviction_log = now
            log.warning("outbox over its budget of %d bytes: evicting lowest priority first; "
                        "evicted so far: %s", self.budget_bytes, ", ".join(
                            f"{n} {k} ({b} bytes)" for k, (n, b) in sorted(self.evictions.items())))
        return evicted

    def make_room(self, nbytes: int) -> int:
        """Delete about ``nbytes`` of data: delivered records first, then the lowest priority
        and oldest undelivered records and blobs (a blob goes whole). Returns how many
        undelivered items were evicted."""
        # No write of the held marks of its own (on a full disk that would fail before the
        # room is made): the choice counts them, the delete's transaction writes them.
        if self._prune_delivered_bytes(nbytes):
            return 0
        column = delivered_column(self.until_ingested)
        held = self._held_delivered()
        # Results in id order (their age, no index needed), the rarer classes through their
        # index, blobs: the oldest undelivered of each, merged by priority then age.
        candidates = sorted(self._db.execute(
            f"SELECT * FROM (SELECT 0, r.id, r.class, r.priority, r.created_ns, "
            f"length(r.payload) FROM {MARKED} WHERE r.class = 'result' AND {column} IS NULL "
            f"AND r.id NOT IN (SELECT value FROM json_each(?1)) ORDER BY r.id LIMIT 5000) "
            f"UNION ALL SELECT * FROM (SELECT 0, r.id, r.class, r.priority, r.created_ns, "
            f"length(r.payload) FROM {MARKED} WHERE r.class != 'result' AND {column} IS NULL "
            f"AND r.id NOT IN (SELECT value FROM json_each(?1)) ORDER BY r.priority, r.id "
            "LIMIT 5000) UNION ALL SELECT * FROM (SELECT 1, rowid, 'shard', priority, "
            "created_ns, size FROM blobs ORDER BY priority, created_ns LIMIT 5000)",
            (held,)).fetchall(),
            key=lambda c: (c[3], c[4]))[:5000]
        counts: dict[str, list[int]] = {}
        doomed_records: list[tuple[int]] = []
        doomed_blobs: list[tuple[int]] = []
        want = nbytes
        for is_blob, rowid, kind, _prio, _created, size in candidates:
            if want <= 0:
                break
            (doomed_blobs if is_blob else doomed_records).append((rowid,))
            entry = counts.setdefault(kind, [0, 0])
            entry[0] += 1
            entry[1] += size
            want -= size + ROW_OVERHEAD
        with self.transaction():
            self._db.executemany("DELETE FROM records WHERE id = ?", doomed_records)
            self._db.executemany("DELETE FROM blob_chunks WHERE blob = "
                                 "(SELECT blob FROM blobs WHERE rowid = ?)", doomed_blobs)
            self._db.executemany("DELETE FROM blobs WHERE rowid = ?", doomed_blobs)
            self._db.executemany(
                "INSERT INTO evictions (class, records, bytes) VALUES (?, ?, ?) ON CONFLICT "
                "(class) DO UPDATE SET records = records + excluded.records, "
                "bytes = bytes + excluded.bytes", [(k, n, b) for k, (n, b) in counts.items()])
        for kind, (n, b) in counts.items():
            entry = self.evictions.setdefault(kind, [0, 0])
            entry[0] += n
            entry[1] += b
        return len(doomed_records) + len(doomed_blobs)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, which first writes the marks held in memory (so that they
        cost no commit of their own, and every delete sees them); afterwards the footprint on
        disk is bounded again (a large one can grow the WAL beyond its allowance until the
        next checkpoint)."""
        sent, acked = self._sent_marks, self._acked_marks
        self._sent_marks, self._acked_marks = {}, {}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._write_marks(sent, acked)
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self.codec.load()  # a dictionary written in the rolled back transaction is gone
            self._write_failed = True  # the idle flush waits for a write that succeeds
            # Held again, under any mark made since (same id: the later one wins).
            self._sent_marks, self._acked_marks = ({**sent, **self._sent_marks},
                                                   {**acked, **self._acked_marks})
            raise
        self._last_write = time.monotonic()
        self._write_failed = False
        self.bound_footprint()

    def _write_marks(self, sent: Mapping[int, int], acked: Mapping[int, int]) -> None:
        """Inside a write transaction: the held marks into ``marks`` (rows of records since
        deleted are skipped), sent before acked."""
        # The watermark moves over the records acked in the file or by these marks, in id
        # order; the marks it passes need no row. Only acks move it (without held acks it is
        # already at the first record not acked: every write of acks moved it that far).
        if acked:
            below = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            new_below = self._next_id
            for (rid,) in self._db.execute(
                    "SELECT r.id FROM records r LEFT JOIN marks m ON m.id = r.id WHERE r.id >= ? "
                    "AND m.acked_ns IS NULL ORDER BY r.id", (below,)):
                if rid not in acked:
                    new_below = rid
                    break
            if below < new_below < 2**31:
                self._db.execute(f"PRAGMA user_version = {int(new_below)}")
                self._db.execute(f"PRAGMA {ACKED_ATTR} = {int(time.time()) - EPOCH_2024}")
                sent = {i: n for i, n in sent.items() if i >= new_below}
                acked = {i: n for i, n in acked.items() if i >= new_below}
                # Rows it passed (acked out of order before, or sent only): no longer needed.
                lowest = self._db.execute("SELECT MIN(id) FROM marks").fetchone()[0]
                if lowest is not None and lowest < new_below:
                    self._db.execute("DELETE FROM marks WHERE id < ?", (new_below,))
        by_time: dict[int, list[int]] = {}
        for rid, ns in sent.items():
            by_time.setdefault(ns, []).append(rid)
        # PUBACKs come mostly in id order: ranges, one statement each.
        self._db.executemany(
            "INSERT INTO marks (id, sent_ns) SELECT id, ? FROM records "
            "WHERE id BETWEEN ? AND ? ON CONFLICT (id) DO UPDATE SET sent_ns = "
            "excluded.sent_ns", [(ns, lo, hi) for ns, ids in by_time.items()
                                 for lo, hi in to_ranges(ids)])
        self._db.executemany(
            "INSERT INTO marks (id, sent_ns, acked_ns) SELECT id, ?, ? FROM records "
            "WHERE id = ? ON CONFLICT (id) DO UPDATE SET acked_ns = excluded.acked_ns, "
            "sent_ns = COALESCE(sent_ns, excluded.sent_ns) WHERE acked_ns IS NULL",
            [(ns, ns, rid) for rid, ns in acked.items()])

    def flush_marks(self) -> None:
        """Write the marks held in memory now, in a transaction of their own."""
        if not (self._sent_marks or self._acked_marks):
            return
        try:
            with self.transaction():
                pass
        except sqlite3.Error as exc:
            raise StorageError(f"cannot record sent and acked marks: {exc}",
                               path=str(self.path)) from exc

    @property
    def marks_held(self) -> int:
        """Sent and acked marks in memory, not yet in the file."""
        return len(self._sent_marks) + len(self._acked_marks)

    def _held_delivered(self) -> str:
        """The ids held as delivered in the delivery mode, as a JSON array for ``json_each``
        (queries that count delivery exclude them: the outbox's view is the file's plus its
        held marks)."""
        if self.until_ingested:
            return "[" + ",".join(map(str, self._acked_marks)) + "]"
        return self._held_sent()  # an ack marks its record sent too

    def _held_sent(self) -> str:
        return "[" + ",".join(map(str, self._sent_marks.keys() | self._acked_marks.keys())) + "]"

    def _prune_delivered_bytes(self, nbytes: int) -> bool:
        """Delete the oldest delivered records worth ``nbytes``; True if that covered it."""
        column = delivered_column(self.until_ingested)
        rows = self._db.execute(
            f"SELECT r.id, length(r.payload) FROM {MARKED} WHERE {column} IS NOT NULL OR "
            "r.id IN (SELECT value FROM json_each(?)) ORDER BY r.id LIMIT 5000",
            (self._held_delivered(),)).fetchall()
        want, doomed = nbytes, []
        for rid, size in rows:
            if want <= 0:
                break
            doomed.append((rid,))
            want -= size + ROW_OVERHEAD
        if doomed:
            with self.transaction():
                self._db.executemany("DELETE FROM records WHERE id = ?", doomed)
        return want <= 0

    def eviction_counts(self) -> dict[str, dict[str, int]]:
        return {k: {"records": n, "bytes": b} for k, (n, b) in sorted(self.evictions.items())}

    # -- delivery ------------------------------------------------------------------------

    def _stored(self, rows: list[tuple[int, str, int, str, bytes, int]]) -> list[StoredRecord]:
        """Records as published: payloads as appended (decompressed), the JSON contract."""
        return [StoredRecord(int(r[0]), r[1], int(r[2]), r[3], self.codec.decode(bytes(r[4])),
                             int(r[5])) for r in rows]

    def fetch_unsent(self, after_id: int, limit: int) -> list[StoredRecord]:
        """Up to ``limit`` records after ``after_id`` neither marked sent in the file nor held
        as sent (or acked) in memory, in id order."""
        return self._stored(self._db.execute(
            f"SELECT r.id, r.stream, r.seq, r.topic, r.payload, r.qos FROM {MARKED} "
            f"WHERE r.id > ? AND {SENT} IS NULL AND r.id NOT IN "
            "(SELECT value FROM json_each(?)) ORDER BY r.id LIMIT ?",
            (after_id, self._held_sent(), limit)).fetchall())

    def fetch_ids(self, record_ids: list[int]) -> list[StoredRecord]:
        """These records if still unsent, in id order."""
        if not record_ids:
            return []
        marks = ",".join("?" * len(record_ids))
        return self._stored(self._db.execute(
            f"SELECT r.id, r.stream, r.seq, r.topic, r.payload, r.qos FROM {MARKED} "
            f"WHERE {SENT} IS NULL AND r.id IN ({marks}) AND r.id NOT IN "
            "(SELECT value FROM json_each(?)) ORDER BY r.id",
            [*record_ids, self._held_sent()]).fetchall())

    def mark_sent(self, record_ids: Iterable[int]) -> None:
        """The broker took these records (PUBACK). Held in memory and written at the start of
        the next write transaction, usually the next commit of records: a transaction of its
        own per PUBACK batch wrote another one to three pages (bench sync, live camera). A
        crash before they are written only means those records are published again (ingest
        dedupes); the outbox's own view (backlog, unsent) includes them at once."""
        now = time.time_ns()
        for rid in record_ids:
            self._sent_marks[rid] = now
        if self.marks_held >= MARKS_HELD:
            self.flush_marks()

    def mark_ingested(self, stream: str, ranges: Iterable[tuple[int, int]]) -> int:
        """Record the backend's ack for inclusive seq ranges of a stream; returns records newly
        acked. Held in memory like :meth:`mark_sent` (ingest acks every batch it stores, about
        every 50 ms: a transaction each would write as much as the records)."""
        now = time.time_ns()
        changed = 0
        try:
            for lo, hi in ranges:
                for (rid,) in self._db.execute(
                        f"SELECT r.id FROM {MARKED} WHERE r.stream = ? AND r.seq BETWEEN ? AND ? "
                        f"AND {ACKED} IS NULL", (stream, lo, hi)):
                    if rid not in self._acked_marks:
                        self._acked_marks[rid] = now
                        changed += 1
        except sqlite3.Error as exc:
            raise StorageError(f"cannot record ingest ack: {exc}", path=str(self.path)) from exc
        if self.marks_held >= MARKS_HELD:
            self.flush_marks()
        return changed

    def requeue_unacked(self, sent_before_ns: int) -> int:
        """Sent but never acknowledged before ``sent_before_ns``: back to unsent. Returns count."""
        # Not a record whose ack the outbox holds; autocommitted, so that nothing is written
        # when nothing is due (the housekeeping calls this every few seconds).
        cur = self._db.execute(
            "DELETE FROM marks WHERE acked_ns IS NULL AND sent_ns < ? AND id NOT IN "
            "(SELECT value FROM json_each(?))",
            (sent_before_ns, "[" + ",".join(map(str, self._acked_marks)) + "]"))
        # Sent marks still held (not in the file yet) that are as old: forgotten.
        held = [i for i, ns in self._sent_marks.items()
                if ns < sent_before_ns and i not in self._acked_marks]
        for i in held:
            del self._sent_marks[i]
        return int(cur.rowcount) + len(held)

    def backlog(self) -> tuple[int, float | None]:
        """Records not yet delivered (ingested, or sent when delivery is to the broker), and the
        age in seconds of the oldest of them."""
        count, oldest = query_backlog(self._db, self.until_ingested, self._held_delivered())
        age = (time.time_ns() - oldest) / 1e9 if oldest is not None else None
        return count, age

    def prune_sent(self, keep: int) -> int:
        """Delete delivered records beyond the newest ``keep``, once they are ``keep / 16``
        more than that; returns how many went. Marks held in memory for longer than
        ``MARKS_IDLE_S`` without a write to carry them are written here (the housekeeping
        calls this every few seconds)."""
        column = delivered_column(self.until_ingested)
        # A prune rewrites the pages of the rows it deletes and the b-trees' paths to them:
        # 150 rows every 10 s (a camera at 15 fps) cost 4.5 WAL frames a second, a fifth of
        # what the camera's own commits write; ~600 at a time cost a quarter of that.
        slack = keep // 16
        if slack and self._db.execute(
                f"SELECT NOT EXISTS (SELECT 1 FROM {MARKED} WHERE {column} "
                "IS NOT NULL OR r.id IN (SELECT value FROM json_each(?)) ORDER BY r.id DESC "
                "LIMIT 1 OFFSET ?)", (self._held_delivered(), keep + slack)).fetchone()[0]:
            if (self.marks_held and not self._write_failed
                    and time.monotonic() - self._last_write > MARKS_IDLE_S):
                self.flush_marks()
            return 0
        # marks holds rows of existing records only (the delete trigger drops a record's mark).
        with self.transaction():
            cur = self._db.execute(
                f"DELETE FROM records WHERE id IN (SELECT r.id FROM {MARKED} WHERE {column} IS "
                f"NOT NULL AND r.id <= (SELECT r.id FROM {MARKED} WHERE {column} IS NOT NULL "
                "ORDER BY r.id DESC LIMIT 1 OFFSET ?))", (keep,))
            return int(cur.rowcount)

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA quick_check").fetchone()[0] == "ok")
