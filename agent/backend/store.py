"""Where ingest keeps records: SQLite (``sqlite:///PATH``) or PostgreSQL
(``postgresql://user@host:port/db?schema=NAME``).

Both stores are idempotent on (device, stream, seq): a redelivered or re-published record
is counted as a duplicate and stored once, so several ingest processes on one shared
subscription, or an ingest restarted mid-batch, never store a record twice.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent.backend.decode import PAYLOAD_KEPT, clean
from agent.backend.shards import BlobDirectory, ShardPart
from agent.core.contract.ack import Ranges, to_ranges
from agent.core.contract.count import CountRecord
from agent.errors import RecordRejected, StorageError


@dataclass(frozen=True)
class IngestedRecord:
    """A validated record: ``count`` is set for a ``lepton.count`` record, which goes to the
    ``count_buckets`` and ``counts`` tables instead of ``records``."""

    device: str
    site: str
    stream: str
    seq: int
    ts: str
    payload: str
    count: CountRecord | None = None


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
CREATE TABLE IF NOT EXISTS shard_chunks (
    blob TEXT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL, size INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (blob, idx));
CREATE TABLE IF NOT EXISTS shard_manifests (
    blob TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, manifest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    blob TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL,
    content_type TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL, meta TEXT NOT NULL,
    stored_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS count_buckets (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, site TEXT NOT NULL,
    source TEXT NOT NULL, start_s INTEGER NOT NULL, seconds INTEGER NOT NULL,
    partial INTEGER NOT NULL, received_ns INTEGER NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (device, stream, seq));
CREATE TABLE IF NOT EXISTS counts (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, site TEXT NOT NULL,
    source TEXT NOT NULL, start_s INTEGER NOT NULL, seconds INTEGER NOT NULL,
    partial INTEGER NOT NULL, rule TEXT NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL,
    direction TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (device, stream, seq, rule, kind, label, direction));
CREATE INDEX IF NOT EXISTS counts_site_start ON counts (site, start_s);
CREATE INDEX IF NOT EXISTS count_buckets_site_start ON count_buckets (site, start_s);
"""
COUNT_BUCKET_COLUMNS = ("device", "stream", "seq", "site", "source", "start_s", "seconds",
                        "partial")
"""The ``count_buckets`` columns both stores share (SQLite adds received_ns and payload,
PostgreSQL received_at and payload): one row per count record, an empty bucket included."""
COUNT_COLUMNS = (*COUNT_BUCKET_COLUMNS, "rule", "kind", "label", "direction", "count")
"""The ``counts`` columns: one row per count entry, the bucket's columns repeated so that a
tally is one GROUP BY over one table (agent/backend/counts.py)."""


def bucket_row(r: IngestedRecord) -> tuple[Any, ...]:
    """The ``count_buckets`` values of a count record (COUNT_BUCKET_COLUMNS order)."""
    assert r.count is not None
    b = r.count.bucket
    return (r.device, r.stream, r.seq, r.site, r.count.source, b.start_s, b.seconds,
            int(b.partial))


def count_rows(r: IngestedRecord) -> list[tuple[Any, ...]]:
    """The ``counts`` rows of a count record (COUNT_COLUMNS order), one per entry."""
    assert r.count is not None
    head = bucket_row(r)
    return [(*head, e.rule, e.kind, e.label, e.direction, e.count) for e in r.count.counts]


@dataclass(frozen=True)
class ShardState:
    """Where a blob stands after a part was stored: complete, or the chunk ranges held."""

    complete: bool
    held: Ranges
    path: Path | None = None


class BlobMismatch(RecordRejected):
    """A blob's chunks, each intact, do not hash to the blob's id; they were dropped."""


Execute = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


def assemble_shard(execute: Execute, part: ShardPart, blobs: BlobDirectory) -> ShardState:
    """Store one shard part and finish its blob when complete, inside the caller's
    transaction (SQL in ``?`` placeholders; both SQLite and PostgreSQL run it)."""
    topic = f"shards/{part.blob}"
    if execute("SELECT 1 FROM blobs WHERE blob = ?", (part.blob,)):
        return ShardState(True, [], blobs.path(part.blob))
    known = execute("SELECT count, size FROM shard_chunks WHERE blob = ? LIMIT 1", (part.blob,))
    if known and (int(known[0][0]), int(known[0][1])) != (part.count, part.size):
        raise RecordRejected(f"blob {part.blob[:12]}...: chunk count/size {part.count}/{part.size} "
                             f"disagree with earlier chunks ({known[0][0]}/{known[0][1]})",
                             topic=topic)
    if part.manifest is not None:
        execute("INSERT INTO shard_manifests VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (part.blob, part.device, part.site, json.dumps(part.manifest)))
    else:
        execute("INSERT INTO shard_chunks VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (part.blob, part.index, part.count, part.size, part.data))
    have = [int(r[0]) for r in execute("SELECT idx FROM shard_chunks WHERE blob = ? ORDER BY idx",
                                       (part.blob,))]
    manifest = execute("SELECT device, site, manifest FROM shard_manifests WHERE blob = ?",
                       (part.blob,))
    if not manifest or len(have) != part.count:
        return ShardState(False, to_ranges(have))
    chunks = [bytes(r[0]) for r in execute(
        "SELECT data FROM shard_chunks WHERE blob = ? ORDER BY idx", (part.blob,))]
    path = blobs.write(part.blob, chunks)
    execute("DELETE FROM shard_chunks WHERE blob = ?", (part.blob,))
    execute("DELETE FROM shard_manifests WHERE blob = ?", (part.blob,))
    if path is None:
        raise BlobMismatch(f"blob {part.blob[:12]}... reassembled does not match its sha256; "
                           "dropped (the device sends it again)", topic=topic)
    device, site, raw = manifest[0]
    m = raw if isinstance(raw, dict) else json.loads(raw)  # JSONB arrives parsed
    execute("INSERT INTO blobs (blob, device, site, kind, content_type, size, path, meta) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (part.blob, device, site, m.get("kind", part.kind),
             m.get("content_type", part.content_type), part.size, str(path),
             json.dumps(m.get("meta", {}))))
    return ShardState(True, [], path)


class Unstorable(Exception):
    """The database refused a record's values (not the database being unavailable): the
    transaction was rolled back, and the record is rejected rather than retried."""


class StoreUnavailable(StorageError):
    """The database server cannot be reached (connection refused or lost, server restarting):
    nothing of the batch was stored. Ingest keeps it unacknowledged and calls
    :meth:`Store.reconnect` with a backoff; a full disk or a refused write is not this."""


class Store(Protocol):
    """What ingest needs from a database."""

    blobs: BlobDirectory

    def store(self, records: list[IngestedRecord]) -> int: ...
    def add_shard(self, part: ShardPart) -> ShardState: ...
    def reject(self, topic: str, reason: str, payload: bytes) -> None: ...
    def count(self) -> int: ...
    def reconnect(self) -> None: ...
    def stored_keys(self, site: str, stream: str) -> list[tuple[str, int]]: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


_OWN_TABLES = {"records", "rejects", "shard_chunks", "shard_manifests", "blobs",
               "sqlite_sequence", "count_buckets", "counts"}
_RECORD_COLUMNS = ["device", "stream", "seq", "site", "ts", "received_ns", "payload"]
# What a value (not the database's state) can make SQLite or the driver refuse.
_SQLITE_DATA_ERRORS = (OverflowError, ValueError, sqlite3.IntegrityError, sqlite3.DataError,
                       sqlite3.InterfaceError)


class SqliteStore:
    """Idempotent record store keyed by (device, stream, seq), in one SQLite file."""

    def __init__(self, path: Path, blob_dir: Path | None = None) -> None:
        self.path = path
        self.blobs = BlobDirectory(blob_dir or path.parent / "blobs")
        if not path.parent.is_dir():
            raise StorageError(f"the directory {path.parent} does not exist", path=str(path),
                               fix=f"create it (mkdir -p {path.parent}) or name another path; "
                                   "ingest does not create directories")
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._check_tables()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_DDL)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open ingest database: {exc}", path=str(path),
                               fix="check the file is an SQLite database and the directory is "
                                   "writable") from exc

    def _check_tables(self) -> None:
        """Refuse a database that belongs to something else (an agent's outbox.db, say)."""
        tables = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        foreign = sorted(tables - _OWN_TABLES)
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(records)")]
        if foreign or (columns and columns != _RECORD_COLUMNS):
            what = f"tables {', '.join(foreign)}" if foreign else "another records table"
            self._db.close()
            raise StorageError(f"not an ingest database: it holds {what} (an agent's outbox.db?)",
                               path=str(self.path),
                               fix="give ingest a database of its own, e.g. "
                                   "sqlite:////var/lib/lepton/ingest.db")

    def store(self, records: list[IngestedRecord]) -> int:
        """Insert records not yet stored, in one transaction; returns how many were new."""
        now = time.time_ns()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO records "
                    "(device, stream, seq, site, ts, received_ns, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.device, r.stream, r.seq, r.site, r.ts, now, r.payload)
                     for r in records if r.count is None])
                inserted = self._db.total_changes - before
                inserted += self._store_counts([r for r in records if r.count is not None], now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except _SQLITE_DATA_ERRORS as exc:
            raise Unstorable(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write records: {exc}", path=str(self.path),
                               fix="check free space and that no other program locks the "
                                   "file; the broker redelivers what was not stored") from exc
        return inserted

    def _store_counts(self, records: list[IngestedRecord], now: int) -> int:
        """Count records not yet stored, inside the caller's transaction: the bucket row, and
        its entries only when the bucket is new (so a redelivery adds nothing)."""
        new = 0
        for r in records:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO count_buckets (device, stream, seq, site, source, start_s, "
                "seconds, partial, received_ns, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*bucket_row(r), now, r.payload))
            if cur.rowcount == 1:
                new += 1
                self._db.executemany(
                    f"INSERT OR IGNORE INTO counts ({', '.join(COUNT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(COUNT_COLUMNS))})", count_rows(r))
        return new

    def add_shard(self, part: ShardPart) -> ShardState:
        """Keep a chunk or manifest; finish the blob when it has everything."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            state = assemble_shard(lambda sql, args: db.execute(sql, args).fetchall(), part,
                                   self.blobs)
            db.execute("COMMIT")
            return state
        except BlobMismatch:
            db.execute("COMMIT")  # the bad chunks are deleted; the device sends the blob again
            raise
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, _SQLITE_DATA_ERRORS):
                raise Unstorable(str(exc)) from exc
            raise

    def reject(self, topic: str, reason: str, payload: bytes) -> None:
        self._db.execute("INSERT INTO rejects (received_ns, topic, reason, payload) VALUES (?,?,?,?)",
                         (time.time_ns(), clean(topic, 1000), clean(reason),
                          payload[:PAYLOAD_KEPT]))

    def reconnect(self) -> None:
        """Nothing to reconnect to: a file's errors are not transient (StorageError stops
        ingest)."""

    def describe(self) -> str:
        return f"SQLite {self.path.resolve()}"

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def stored_keys(self, site: str, stream: str) -> list[tuple[str, int]]:
        """(device, seq) of every record of ``stream`` stored for ``site``."""
        return [(str(d), int(q)) for d, q in self._db.execute(
            "SELECT device, seq FROM records WHERE site = ? AND stream = ?", (site, stream))]

    def close(self) -> None:
        self._db.close()


_PG_DDL = """
CREATE TABLE IF NOT EXISTS records (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    site TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload JSONB NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX IF NOT EXISTS records_site_ts ON records (site, ts);
CREATE TABLE IF NOT EXISTS rejects (
    id BIGSERIAL PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BYTEA
);
CREATE TABLE IF NOT EXISTS shard_chunks (
    blob TEXT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL, size BIGINT NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (blob, idx));
CREATE TABLE IF NOT EXISTS shard_manifests (
    blob TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, manifest JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    blob TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL,
    content_type TEXT NOT NULL, size BIGINT NOT NULL, path TEXT NOT NULL, meta JSONB NOT NULL,
    stored_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS count_buckets (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, site TEXT NOT NULL,
    source TEXT NOT NULL, start_s BIGINT NOT NULL, seconds INTEGER NOT NULL,
    partial SMALLINT NOT NULL, received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload JSONB NOT NULL, PRIMARY KEY (device, stream, seq));
CREATE TABLE IF NOT EXISTS counts (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, site TEXT NOT NULL,
    source TEXT NOT NULL, start_s BIGINT NOT NULL, seconds INTEGER NOT NULL,
    partial SMALLINT NOT NULL, rule TEXT NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL,
    direction TEXT NOT NULL, count BIGINT NOT NULL,
    PRIMARY KEY (device, stream, seq, rule, kind, label, direction));
CREATE INDEX IF NOT EXISTS counts_site_start ON counts (site, start_s);
CREATE INDEX IF NOT EXISTS count_buckets_site_start ON count_buckets (site, start_s);
"""
_PG_RECORD_COLUMNS = ["device", "stream", "seq", "site", "ts", "received_at", "payload"]
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresStore:
    """Idempotent record store in PostgreSQL: one multi-row ``INSERT .. ON CONFLICT DO NOTHING``
    per batch, so concurrent ingest processes never store a record twice."""

    def __init__(self, url: str, blob_dir: Path | None = None) -> None:
        self.blobs = BlobDirectory(blob_dir or Path("blobs"))
        try:
            import psycopg
        except ImportError as exc:
            raise StorageError("PostgreSQL ingest needs psycopg", path=_redact(url),
                               fix="pip install 'lepton-edge[backend]'") from exc
        self._psycopg: Any = psycopg
        self._url = _redact(url)
        self._full_url = url
        self._conninfo, self.schema = _split_schema(url)
        self._connect()

    def _connect(self) -> None:
        """Open the connection, make the schema and tables (under an advisory lock)."""
        psycopg = self._psycopg
        url = self._full_url
        try:
            # The application name carries the schema, so an operator (or a test) can tell
            # which ingest a server-side connection belongs to in pg_stat_activity.
            self._db = psycopg.connect(self._conninfo, autocommit=False, connect_timeout=10,
                                       application_name=f"lepton-ingest/{self.schema or '-'}")
            with self._db.cursor() as cur:
                if self.schema:
                    cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    cur.execute(f'SET search_path TO "{self.schema}"')
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('lepton-ingest-ddl'))")
                cur.execute("SELECT column_name FROM information_schema.columns WHERE "
                            "table_schema = current_schema() AND table_name = 'records' "
                            "ORDER BY ordinal_position")
                columns = [r[0] for r in cur.fetchall()]
                if columns and columns != _PG_RECORD_COLUMNS:
                    self._db.close()
                    raise StorageError(
                        f"not an ingest database: its records table has columns "
                        f"{', '.join(columns)}", path=_redact(url),
                        fix="give ingest a schema of its own (?schema=NAME)")
                cur.execute(_PG_DDL)
            self._db.commit()
        except psycopg.Error as exc:
            raise StorageError(f"cannot open PostgreSQL: {exc}".strip(), path=_redact(url),
                               fix="check the server is up, the URL, and that the user may "
                                   "create tables in the schema") from exc

    def reconnect(self) -> None:
        """A new connection after the server went away; StoreUnavailable while it stays away."""
        with contextlib.suppress(Exception):
            self._db.close()
        try:
            self._connect()
        except StorageError as exc:
            raise StoreUnavailable(str(exc), path=self._url,
                                   fix="ingest retries with a backoff") from exc

    def store(self, records: list[IngestedRecord]) -> int:
        """Insert records not yet stored, in one transaction; returns how many were new."""
        if not records:
            return 0
        rows = [(r.device, r.stream, r.seq, r.site, r.ts, r.payload) for r in records
                if r.count is None]
        counted = [r for r in records if r.count is not None]
        inserted = 0
        try:
            with self._db.cursor() as cur:
                if rows:
                    cols = list(zip(*rows, strict=True))
                    # Arrays sent in binary (%b): the server reads each element as it is,
                    # where a text array literal (%s) is parsed and unescaped whole first
                    # (measured, 20,000 results in batches of 2,000: 4,200-7,000 rows/s as
                    # text, 10,400-17,400 binary; COPY into a staging table was no faster).
                    cur.execute(
                        "INSERT INTO records (device, stream, seq, site, ts, payload) "
                        "SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], "
                        "%b::text[]::timestamptz[], %b::text[]::jsonb[]) ON CONFLICT DO NOTHING",
                        [list(c) for c in cols])
                    inserted = int(cur.rowcount)
                if counted:
                    inserted += self._store_counts(cur, counted)
            self._db.commit()
        except self._psycopg.Error as exc:
            self._refused(exc)
        return inserted

    @staticmethod
    def _store_counts(cur: Any, records: list[IngestedRecord]) -> int:
        """Count records not yet stored, in the caller's transaction: the bucket rows, then the
        entries of those buckets this statement inserted (RETURNING), so a redelivery, or a
        second ingest process inserting the same record at once, adds no entry twice."""
        buckets = [(*bucket_row(r), r.payload) for r in records]
        cur.execute(
            "INSERT INTO count_buckets (device, stream, seq, site, source, start_s, seconds, "
            "partial, payload) SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], "
            "%s::text[], %s::text[], %s::bigint[], %s::int[], %s::smallint[], %s::jsonb[]) "
            "ON CONFLICT DO NOTHING RETURNING device, stream, seq",
            [list(c) for c in zip(*buckets, strict=True)])
        new = {(d, s, int(q)) for d, s, q in cur.fetchall()}
        entries = [row for r in records if (r.device, r.stream, r.seq) in new
                   for row in count_rows(r)]
        if entries:
            cur.execute(
                f"INSERT INTO counts ({', '.join(COUNT_COLUMNS)}) SELECT * FROM unnest("
                "%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[], "
                "%s::int[], %s::smallint[], %s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::bigint[]) ON CONFLICT DO NOTHING",
                [list(c) for c in zip(*entries, strict=True)])
        return len(new)

    def _refused(self, exc: Exception) -> NoReturn:
        """Roll back; a value the server refuses is Unstorable, anything else a StorageError."""
        if not self._db.closed:
            with contextlib.suppress(self._psycopg.Error):
                self._db.rollback()
        if isinstance(exc, (self._psycopg.DataError, self._psycopg.IntegrityError)):
            raise Unstorable(str(exc).strip()) from exc
        if isinstance(exc, self._psycopg.OperationalError) or self._db.closed:
            # The connection is gone (server restarted, backend terminated, network): nothing
            # of the transaction was kept; ingest holds the batch and reconnects.
            raise StoreUnavailable(f"PostgreSQL went away: {str(exc).strip()}", path=self._url,
                                   fix="ingest reconnects with a backoff; check the server")
        raise StorageError(f"PostgreSQL: {str(exc).strip()}", path=self._url,
                           fix="check the server is up; the broker redelivers what was not "
                               "stored") from exc

    def add_shard(self, part: ShardPart) -> ShardState:
        """Keep a chunk or manifest; finish the blob when it has everything. A per-blob
        advisory lock serializes ingest processes, so exactly one of them finishes it."""
        try:
            with self._db.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (part.blob,))

                def execute(sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                    cur.execute(sql.replace("?", "%s"), args)
                    return list(cur.fetchall()) if cur.description else []

                state = assemble_shard(execute, part, self.blobs)
            self._db.commit()
            return state
        except BlobMismatch:
            self._db.commit()  # the bad chunks are deleted; the device sends the blob again
            raise
        except self._psycopg.Error as exc:
            self._refused(exc)
        except BaseException:
            if not self._db.closed:
                self._db.rollback()
            raise

    def reject(self, topic: str, reason: str, payload: bytes) -> None:
        try:
            with self._db.cursor() as cur:
                cur.execute("INSERT INTO rejects (topic, reason, payload) VALUES (%s, %s, %s)",
                            (clean(topic, 1000), clean(reason), payload[:PAYLOAD_KEPT]))
            self._db.commit()
        except self._psycopg.Error as exc:
            self._refused(exc)

    def describe(self) -> str:
        return f"PostgreSQL {self._url}" + (f" schema {self.schema}" if self.schema else "")

    def count(self) -> int:
        with self._db.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM records")
            row = cur.fetchone()
        self._db.commit()
        return int(row[0]) if row else 0

    def stored_keys(self, site: str, stream: str) -> list[tuple[str, int]]:
        """(device, seq) of every record of ``stream`` stored for ``site``."""
        with self._db.cursor() as cur:
            cur.execute("SELECT device, seq FROM records WHERE site = %s AND stream = %s",
                        (site, stream))
            rows = [(str(d), int(q)) for d, q in cur.fetchall()]
        self._db.commit()
        return rows

    def close(self) -> None:
        self._db.close()


_REQUIRED_TABLES = _OWN_TABLES - {"sqlite_sequence"}


def check_store(url: str) -> tuple[bool, str]:
    """Whether the database ``url`` names is reachable and its tables are ingest's current ones
    (without creating anything), and one line saying so."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return _check_postgres(url)
    path = sqlite_path(url)
    if not path.exists():
        return True, (f"SQLite {path.resolve()}: absent; ingest creates it with the current "
                      "tables at start")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=5)) as db:
            tables = {r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = [r[1] for r in db.execute("PRAGMA table_info(records)")]
    except sqlite3.Error as exc:
        return False, f"SQLite {path.resolve()}: cannot read it: {exc}"
    return _schema_verdict(f"SQLite {path.resolve()}", tables, columns, _RECORD_COLUMNS)


def _check_postgres(url: str) -> tuple[bool, str]:
    try:
        import psycopg
    except ImportError:
        return False, "PostgreSQL: psycopg is not installed (pip install 'lepton-edge[backend]')"
    conninfo, schema = _split_schema(url)
    where = f"PostgreSQL {_redact(url)}"
    try:
        with psycopg.connect(conninfo, connect_timeout=5) as db:
            name = schema or db.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
            tables = {r[0] for r in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (name,))}
            columns = [r[0] for r in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = 'records' ORDER BY ordinal_position", (name,))]
    except psycopg.Error as exc:
        return False, f"{where}: unreachable: {' '.join(str(exc).split())}"
    if not tables:
        return True, f"{where}: reachable; schema empty, ingest creates the tables at start"
    return _schema_verdict(f"{where}: reachable;", tables, columns, _PG_RECORD_COLUMNS)


def _schema_verdict(where: str, tables: set[str], columns: list[str],
                    want: list[str]) -> tuple[bool, str]:
    foreign = sorted(tables - _OWN_TABLES)
    if foreign:
        return False, f"{where} holds tables that are not ingest's: {', '.join(foreign)}"
    if columns and columns != want:
        return False, f"{where} records table has columns {', '.join(columns)}, not ingest's"
    missing = sorted(_REQUIRED_TABLES - tables)
    if missing:
        return False, (f"{where} schema is behind: tables {', '.join(missing)} missing "
                       "(ingest adds them at its next start)")
    return True, f"{where} schema current ({len(_REQUIRED_TABLES)} tables)"


def _split_schema(url: str) -> tuple[str, str | None]:
    """Take our ``schema=NAME`` query parameter out of a libpq URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise StorageError(f"schema name {schema!r} is not a plain lowercase identifier",
                           path=_redact(url), fix="use letters, digits and _ (e.g. schema=lepton)")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def open_store(url: str, blob_dir: Path | None = None) -> Store:
    """Open the store named by ``sqlite:///PATH`` (or a bare path) or ``postgresql://...``;
    finished blobs go to ``blob_dir`` (default: ``blobs/`` beside the SQLite file, or in the
    working directory for PostgreSQL)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return PostgresStore(url, blob_dir)
    return SqliteStore(sqlite_path(url), blob_dir)


def sqlite_path(url: str) -> Path:
    """The file an SQLite URL names, by SQLAlchemy's convention: ``sqlite:////abs/x.db`` (four
    slashes) is absolute, ``sqlite:///rel/x.db`` relative to the working directory; a bare
    path is taken as it is. Its directory must exist: a missing one is an error, never created,
    and one that only exists read as absolute says so."""
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", ""):
        raise StorageError(f"unknown database scheme {parts.scheme!r}", path=url,
                           fix="use sqlite:///PATH or postgresql://user@host/db")
    if parts.scheme and (parts.netloc or not url.startswith("sqlite:///")):
        raise StorageError("the path must follow sqlite:/// (three slashes)", path=url,
                           fix="use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    raw = url[len("sqlite:///"):] if parts.scheme else url
    if not raw:
        raise StorageError("no database path", path=url, fix="use sqlite:///PATH")
    path = Path(raw)
    if not path.parent.is_dir():
        where = path.parent.absolute()
        fix = f"create it (mkdir -p {where}) or name another path; ingest creates no directories"
        if parts.scheme and not path.is_absolute() and Path("/", raw).parent.is_dir():
            fix = (f"for the absolute path /{raw} write sqlite:////{raw} (four slashes: "
                   f"sqlite:/// then /{raw}); sqlite:///{raw} is relative to the working "
                   f"directory {Path.cwd()}")
        raise StorageError(f"the directory {where} does not exist", path=url, fix=fix)
    return path
