"""Blobs (event snapshots, clips, sensor windows, dataset samples) kept in the outbox file.

A blob is content-addressed (its sha256), split into chunks of ``chunk_size`` bytes, and sent
as one message per chunk on ``shards/{blob}`` plus a manifest (JSON metadata) on the same
topic. Chunks are marked sent on the broker's PUBACK and acknowledged by ingest (whole blobs,
or for a blob still incomplete at ingest, the chunk ranges it holds), so after a reconnect or
a restart only chunks not yet sent, or sent but never acknowledged after the ack timeout, go
out again. Blobs share the outbox's disk budget (class ``shard``, or their own class) and
expire.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from agent.core.contract.shard import MANIFEST, OutgoingPart, manifest_payload
from agent.errors import BlobTooLarge, StorageError
from agent.storage.outbox import ROW_OVERHEAD, Outbox


class BlobStore:
    """The device side of shards, over the outbox's SQLite connection (one thread)."""

    def __init__(self, outbox: Outbox, *, chunk_size: int = 64 * 1024,
                 expiry_s: float = 7 * 24 * 3600) -> None:
        if chunk_size < 1024:
            raise ValueError("chunk_size must be at least 1 KiB")
        self.outbox = outbox
        self.db: sqlite3.Connection = outbox.db
        self.chunk_size = chunk_size
        self.expiry_s = expiry_s
        self.expired = 0
        # Whether unsent parts may exist: the uplink asks on every PUBACK batch, and with no
        # blobs waiting (the usual case) that must not cost a query.
        self.maybe_pending = bool(self.db.execute("SELECT 1 FROM blobs LIMIT 1").fetchone())
        self._next_expiry = 0.0

    def put(self, data: bytes, *, kind: str = "snapshot", content_type: str = "image/jpeg",
            meta: Mapping[str, Any] | None = None, record_class: str = "shard",
            expiry_s: float | None = None) -> str:
        """Store a blob (a no-op if the same content is already waiting); returns its id."""
        if not data:
            raise ValueError("a blob needs at least one byte")
        blob = hashlib.sha256(data).hexdigest()
        now = time.time_ns()
        ttl = self.expiry_s if expiry_s is None else expiry_s
        count = (len(data) + self.chunk_size - 1) // self.chunk_size

        def insert() -> None:
            with self.outbox.transaction():
                self._insert(blob, data, kind, content_type, count, now, ttl, record_class, meta)

        nbytes = len(data) + count * ROW_OVERHEAD
        cap = self.outbox.file_cap_bytes
        if cap is not None and nbytes > cap:  # could never fit: evict nothing for it
            raise self._over_budget(kind, len(data), cap, "it is larger than that",
                                    BlobTooLarge)
        try:
            # A blob larger than the budget's headroom meets the file's page cap: room is
            # made (lowest priority first) and the insert tried again.
            self.outbox.write_within_budget(insert, nbytes)
        except sqlite3.Error as exc:
            if cap is not None and self.outbox.at_page_cap(nbytes):
                raise self._over_budget(kind, len(data), cap,
                                        "evicting older items did not make room",
                                        StorageError) from exc
            raise StorageError(f"cannot store blob: {exc}", path=str(self.outbox.path),
                               fix="free space on the state directory's filesystem") from exc
        self.maybe_pending = True
        self.outbox.enforce_budget()
        return blob

    def _over_budget(self, kind: str, size: int, cap: int, why: str,
                     error: type[StorageError]) -> StorageError:
        return error(
            f"cannot store a {kind} of {size} bytes: the outbox's budget of "
            f"{self.outbox.budget_bytes} bytes leaves its database {cap} bytes and {why}",
            path=str(self.outbox.path),
            fix=f"raise [outbox] budget_bytes, or make the {kind}s smaller (a lower resolution "
                "or JPEG quality)")

    def _insert(self, blob: str, data: bytes, kind: str, content_type: str, count: int, now: int,
                ttl: float, record_class: str, meta: Mapping[str, Any] | None) -> None:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO blobs (blob, kind, content_type, size, chunk_size, "
            "chunk_count, priority, created_ns, expires_ns, meta) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (blob, kind, content_type, len(data), self.chunk_size, count,
             self.outbox.priority(record_class), now, now + int(ttl * 1e9) if ttl else None,
             json.dumps(dict(meta or {}), sort_keys=True)))
        if cur.rowcount:  # new content (the same blob waiting already is a no-op)
            self.db.executemany(
                "INSERT INTO blob_chunks (blob, idx, data) VALUES (?, ?, ?)",
                [(blob, i, data[i * self.chunk_size:(i + 1) * self.chunk_size])
                 for i in range(count)])

    def pending(self, limit: int, exclude: set[tuple[str, int]] | None = None) -> list[OutgoingPart]:
        """Up to ``limit`` parts not yet sent: highest priority blobs first, oldest first,
        each blob's manifest before its chunks."""
        if not self.maybe_pending:
            return []
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + 10.0
            self.expire()
        exclude = exclude or set()
        out: list[OutgoingPart] = []
        rows = self.db.execute(
            "SELECT blob, kind, content_type, size, chunk_size, chunk_count, created_ns, "
            "expires_ns, meta, manifest_sent_ns FROM blobs ORDER BY priority DESC, created_ns "
            "LIMIT 64").fetchall()
        for blob, kind, ctype, size, chunk_size, count, created, expires, meta, msent in rows:
            if msent is None and (blob, MANIFEST) not in exclude:
                out.append(OutgoingPart(blob, MANIFEST, count, size, manifest_payload(
                    blob=blob, size=size, chunk_size=chunk_size, chunk_count=count, kind=kind,
                    content_type=ctype, created_ns=created, expires_ns=expires,
                    meta=json.loads(meta)), kind, ctype))
            if len(out) >= limit:
                break
            for idx, data in self.db.execute(
                    "SELECT c.idx, c.data FROM blob_chunks c WHERE c.blob = ? AND NOT EXISTS "
                    "(SELECT 1 FROM chunk_sent s WHERE s.blob = c.blob AND s.idx = c.idx) "
                    "ORDER BY c.idx LIMIT ?", (blob, limit - len(out) + len(exclude))):
                if (blob, idx) in exclude:
                    continue
                out.append(OutgoingPart(blob, idx, count, size, bytes(data), kind, ctype))
                if len(out) >= limit:
                    break
            if len(out) >= limit:
                break
        if not out and not exclude:
            self.maybe_pending = False
        return out

    def mark_sent(self, parts: Iterable[tuple[str, int]]) -> None:
        now = time.time_ns()
        with self.outbox.transaction():
            self._mark_sent(parts, now)

    def _mark_sent(self, parts: Iterable[tuple[str, int]], now: int) -> None:
        for blob, idx in parts:
            if idx == MANIFEST:
                self.db.execute("UPDATE blobs SET manifest_sent_ns = ? WHERE blob = ?", (now, blob))
            else:  # a row of chunk_sent: the chunk's own row (and its pages) is not rewritten
                self.db.execute("INSERT INTO chunk_sent (blob, idx, sent_ns) SELECT blob, idx, ? "
                                "FROM blob_chunks WHERE blob = ? AND idx = ? ON CONFLICT "
                                "(blob, idx) DO UPDATE SET sent_ns = excluded.sent_ns",
                                (now, blob, idx))

    def on_ack(self, complete: Iterable[str], held: Mapping[str, list[tuple[int, int]]]) -> int:
        """Ingest's word: ``complete`` blobs are stored (deleted here); for the others it
        holds these chunk ranges (those are never sent again). Returns blobs completed."""
        done = 0
        for blob in complete:
            self.db.execute("DELETE FROM blob_chunks WHERE blob = ?", (blob,))
            done += self.db.execute("DELETE FROM blobs WHERE blob = ?", (blob,)).rowcount
        for blob, ranges in held.items():
            for lo, hi in ranges:
                self.db.execute("DELETE FROM blob_chunks WHERE blob = ? AND idx BETWEEN ? AND ?",
                                (blob, lo, hi))
        return done

    def requeue_unacked(self, sent_before_ns: int) -> int:
        """Parts sent but not acknowledged by ``sent_before_ns`` go back to unsent."""
        n = self.db.execute("DELETE FROM chunk_sent WHERE sent_ns < ?",
                            (sent_before_ns,)).rowcount
        # The manifest too, for blobs ingest has not completed (it may have missed it).
        n += self.db.execute("UPDATE blobs SET manifest_sent_ns = NULL WHERE manifest_sent_ns < ?",
                             (sent_before_ns,)).rowcount
        if n:
            self.maybe_pending = True
        return int(n)

    def expire(self) -> int:
        now = time.time_ns()
        gone = [r[0] for r in self.db.execute(
            "SELECT blob FROM blobs WHERE expires_ns IS NOT NULL AND expires_ns < ?", (now,))]
        for blob in gone:
            self.db.execute("DELETE FROM blob_chunks WHERE blob = ?", (blob,))
            self.db.execute("DELETE FROM blobs WHERE blob = ?", (blob,))
        self.expired += len(gone)
        return len(gone)

    def backlog(self) -> tuple[int, int]:
        """Blobs waiting, and their bytes still to send."""
        blobs = int(self.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])
        size = int(self.db.execute("SELECT COALESCE(SUM(length(data)), 0) FROM blob_chunks"
                                   ).fetchone()[0])
        return blobs, size
