"""Payloads compressed at rest: raw deflate with a dictionary per record class.

A result payload is ~640 bytes of JSON, most of it the same keys, schema, device, site and
model every time. Deflate alone gains 1.7x on one record; with a dictionary of two earlier
payloads of the same class it gains 4-5x (measured on generated results with 0-4 detections;
zstd with a trained dictionary gained a little more but is a native dependency, zlib is in the
standard library). The dictionary is made from the first payloads of a class the outbox
stores and is kept in the file (table ``dicts``, in the same transaction as the first record
that uses it), so every compressed payload can be read back for as long as the file lives.

Only JSON objects (the contract's payloads, which the dictionary is made of) are compressed;
other bytes are stored as they are. Only at rest: the outbox decompresses before it hands a
record to the uplink, so the wire payload is the JSON contract, unchanged.

Stored form: ``b"\\xffZ" + dict id (2 bytes, big endian) + raw deflate``; a payload stored as
is that happens to begin with ``0xff`` (never JSON: 0xff is not UTF-8) is escaped as
``b"\\xff\\x00" + payload``. Anything else is a payload stored as is (files from before).
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable

MAGIC = b"\xffZ"
ESCAPE = b"\xff\x00"
DICT_BYTES = 4096  # zlib uses at most 32 KiB; two results are ~1.3 KB
MIN_SIZE = 64  # smaller payloads gain nothing worth a dictionary lookup

DDL = "CREATE TABLE IF NOT EXISTS dicts (id INTEGER PRIMARY KEY, class TEXT NOT NULL, " \
      "data BLOB NOT NULL);"


class CorruptPayload(ValueError):
    """A stored payload that does not decompress (a damaged row or a missing dictionary)."""


class Codec:
    """Compresses payloads per record class, over the outbox's connection (one thread)."""

    def __init__(self, db: sqlite3.Connection, enabled: bool = True) -> None:
        self.db = db
        self.enabled = enabled
        self._by_id: dict[int, bytes] = {}
        self._by_class: dict[str, int] = {}
        self.load()

    def load(self) -> None:
        """Read the dictionaries the file holds (at open, and after a rolled back write)."""
        self._by_id = {int(i): bytes(d) for i, d in self.db.execute(
            "SELECT id, data FROM dicts ORDER BY id")}
        self._by_class = {str(k): int(i) for i, k in self.db.execute(
            "SELECT id, class FROM dicts ORDER BY id")}

    def encode_batch(self, kinds: Iterable[str], payloads: list[bytes]) -> list[bytes]:
        """The stored form of each payload; call inside the write transaction that stores them
        (a new class's dictionary is written in it)."""
        kinds = list(kinds)
        if self.enabled:
            for kind in dict.fromkeys(kinds):
                if kind not in self._by_class:
                    self._new_dict(kind, [p for k, p in zip(kinds, payloads, strict=True)
                                          if k == kind and p[:1] == b"{"])
        return [self.encode(k, p) for k, p in zip(kinds, payloads, strict=True)]

    def _new_dict(self, kind: str, samples: list[bytes]) -> None:
        data = b"".join(samples[:3])[-DICT_BYTES:]
        if len(data) < MIN_SIZE:
            return
        cur = self.db.execute("INSERT INTO dicts (class, data) VALUES (?, ?)", (kind, data))
        did = int(cur.lastrowid or 0)
        self._by_id[did] = data
        self._by_class[kind] = did

    def encode(self, kind: str, payload: bytes) -> bytes:
        did = self._by_class.get(kind) if self.enabled else None
        if did is not None and len(payload) >= MIN_SIZE and payload[:1] == b"{":
            c = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=self._by_id[did])
            packed = MAGIC + did.to_bytes(2, "big") + c.compress(payload) + c.flush()
            if len(packed) < len(payload):
                return packed
        return ESCAPE + payload if payload[:1] == b"\xff" else payload

    def decode(self, stored: bytes) -> bytes:
        return decode(stored, self._by_id)


def decode(stored: bytes, dicts: dict[int, bytes]) -> bytes:
    """The payload as it was appended, from its stored form."""
    if stored[:2] == MAGIC:
        did = int.from_bytes(stored[2:4], "big")
        zdict = dicts.get(did)
        if zdict is None:
            raise CorruptPayload(f"compressed with dictionary {did}, which the file lacks")
        try:
            d = zlib.decompressobj(-15, zdict=zdict)
            return d.decompress(stored[4:]) + d.flush()
        except zlib.error as exc:
            raise CorruptPayload(f"does not decompress: {exc}") from exc
    if stored[:2] == ESCAPE:
        return stored[2:]
    return stored


def read_dicts(db: sqlite3.Connection) -> dict[int, bytes]:
    """The dictionaries of an outbox file, for readers outside the outbox (the report)."""
    try:
        return {int(i): bytes(d) for i, d in db.execute("SELECT id, data FROM dicts")}
    except sqlite3.OperationalError:  # a file from before compression
        return {}
