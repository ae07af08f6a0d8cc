"""The outbox's eviction and budget arithmetic at its edges, on real SQLite files: what is
pruned as delivered, what is evicted and counted, the page cap's two tests at their
boundaries, and the budget split read back from SQLite. The mutation run (``make mutants``)
found these boundaries untested."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.storage import outbox as outbox_mod
from agent.storage.blobs import BlobStore
from agent.storage.outbox import ROW_OVERHEAD, SHM_BYTES, Outbox, PendingRecord, query_evictions

SIZES = [1000, 900, 1100, 800, 1200, 700]  # not in id order: the eviction order is by age


def _box(path: Path, **kw: Any) -> tuple[Outbox, list[int]]:
    """An outbox (uncompressed: stored sizes are the payloads') with one result per SIZES."""
    box = Outbox(path, compress=False, **kw)
    stored = box.append([PendingRecord("s", "t", lambda seq, n=n: b"a" * n) for n in SIZES])
    return box, [r.id for r in stored]


def _ids(box: Outbox) -> list[int]:
    return [int(r[0]) for r in box.db.execute("SELECT id FROM records ORDER BY id")]


def _seq(box: Outbox, rid: int) -> int:
    return int(box.db.execute("SELECT seq FROM records WHERE id = ?", (rid,)).fetchone()[0])


def test_make_room_prunes_delivered_first_and_evicts_by_age(tmp_path: Path) -> None:
    box, ids = _box(tmp_path / "o.db")
    box.mark_sent(ids[:2])
    box.flush_marks()  # 1 and 2 sent (in the file), not ingested: not delivered
    s3 = _seq(box, ids[2])
    assert box.mark_ingested("s", [(s3, s3)]) == 1  # 3 delivered (held in memory)
    # One byte: the delivered record covers it, nothing undelivered goes.
    assert box.make_room(1) == 0
    assert _ids(box) == [ids[0], ids[1], ids[3], ids[4], ids[5]]
    assert box.eviction_counts() == {} and query_evictions(box.db) == {}
    # Exactly the first record's share: it alone goes (the sent-only one counts undelivered).
    assert box.make_room(SIZES[0] + ROW_OVERHEAD) == 1
    assert _ids(box) == [ids[1], ids[3], ids[4], ids[5]]
    # One byte more than the next record's share: two go, the next oldest too.
    assert box.make_room(SIZES[1] + ROW_OVERHEAD + 1) == 2
    assert _ids(box) == [ids[4], ids[5]]
    evicted = SIZES[0] + SIZES[1] + SIZES[3]
    assert box.eviction_counts() == {"result": {"records": 3, "bytes": evicted}}
    assert query_evictions(box.db) == {"result": [3, evicted]}


def test_prune_delivered_bytes_at_its_boundaries(tmp_path: Path) -> None:
    box, ids = _box(tmp_path / "o.db")
    seqs = [_seq(box, i) for i in ids]
    box.mark_ingested("s", [(seqs[0], seqs[2])])  # 1..3 delivered
    # Exactly the first delivered record's share: it alone goes, and it covered the room.
    assert box.make_room(SIZES[0] + ROW_OVERHEAD) == 0
    assert _ids(box) == ids[1:]
    # One byte over the next's share: two delivered go and covered it.
    assert box.make_room(SIZES[1] + ROW_OVERHEAD + 1) == 0
    assert _ids(box) == ids[3:] and box.eviction_counts() == {}
    box.mark_ingested("s", [(seqs[3], seqs[3])])
    # One byte over the last delivered's share: it goes, and the oldest undelivered too.
    assert box.make_room(SIZES[3] + ROW_OVERHEAD + 1) == 1
    assert _ids(box) == ids[5:]
    assert box.eviction_counts() == {"result": {"records": 1, "bytes": SIZES[4]}}


def test_make_room_counts_blobs_and_records(tmp_path: Path) -> None:
    box, ids = _box(tmp_path / "o.db")
    BlobStore(box).put(b"b" * 3000, kind="clip")
    assert box.make_room(10**9) == len(ids) + 1
    assert _ids(box) == [] and box.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
    assert box.db.execute("SELECT COUNT(*) FROM blob_chunks").fetchone()[0] == 0
    assert box.eviction_counts() == {"result": {"records": len(ids), "bytes": sum(SIZES)},
                                     "shard": {"records": 1, "bytes": 3000}}


def test_make_room_evicts_at_most_5000_a_call(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", compress=False)
    box.append([PendingRecord("s", "t", lambda seq: b"x") for _ in range(5000)])
    BlobStore(box).put(b"b" * 2000)  # 5001 candidates: 5000 results (the query's cap) and it
    assert box.make_room(10**9) == 5000
    left = len(_ids(box)) + box.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
    assert left == 1


class _Fs:
    def __init__(self, free: int) -> None:
        self.f_bavail, self.f_frsize = free // 2, 2


def testat_page_cap_free_disk_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The filesystem's free space (stated as exactly 4 MiB + 4000 bytes) against a write."""
    assert not Outbox(tmp_path / "nobudget.db").at_page_cap(10**12)  # no budget: never
    box = Outbox(tmp_path / "o.db", budget_bytes=64 * 1024 * 1024)
    monkeypatch.setattr(outbox_mod.os, "statvfs", lambda _p: _Fs(4 * 1024 * 1024 + 4000))
    assert not box.at_page_cap(1000)  # needs more than 4 x 1000 + 4 MiB free
    assert box.at_page_cap(999)


def testat_page_cap_used_pages_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=4 * 1024 * 1024)

    def no_statvfs(_p: object) -> os.statvfs_result:
        raise OSError("no statvfs")

    monkeypatch.setattr(outbox_mod.os, "statvfs", no_statvfs)
    used = box.usage().used_bytes
    assert box.file_cap_bytes is not None
    gap = box.file_cap_bytes - 4 * box._page - used
    assert gap > 0 and gap % 2 == 0
    assert box.at_page_cap(gap // 2)
    assert not box.at_page_cap(gap // 2 - 1)


def _pragma(box: Outbox, name: str) -> int:
    return int(box.db.execute(f"PRAGMA {name}").fetchone()[0])


@pytest.mark.parametrize("budget", [64 * 1024, 200 * 1024, 8 * 4000 * 4096, 4 * 1024 * 1024])
def test_plan_budget_split(tmp_path: Path, budget: int) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=budget)
    page = _pragma(box, "page_size")
    wal = budget // 8 if budget // 8 > 8 * page else 8 * page
    shm = SHM_BYTES + SHM_BYTES * (wal // page // 4000)
    cap_pages = (budget - box.reserve_bytes - wal - shm) // page
    cap_pages = cap_pages if cap_pages > 16 else 16
    assert box.file_cap_bytes == cap_pages * page
    assert _pragma(box, "max_page_count") == cap_pages
    assert _pragma(box, "journal_size_limit") == wal
    assert _pragma(box, "wal_autocheckpoint") == (wal // 4 // page if wal // 4 // page > 4 else 4)
    margin = cap_pages * page // 8 if cap_pages * page // 8 > 2 * page else 2 * page
    assert type(box.target_bytes) is int and box.target_bytes == cap_pages * page - margin


def _blob_store(path: Path) -> tuple[BlobStore, str, str]:
    """Two blobs of three 1 KiB chunks each, the first older (sent first)."""
    store = BlobStore(Outbox(path, compress=False), chunk_size=1024)
    first = store.put(b"1" * 3072, kind="clip")
    second = store.put(b"2" * 3072, kind="clip")
    return store, first, second


def test_pending_stops_at_the_limit(tmp_path: Path) -> None:
    from agent.core.contract.shard import MANIFEST
    store, a, b = _blob_store(tmp_path / "o.db")
    # The limit met by a blob's chunk: the next blob's manifest waits.
    assert [(p.blob, p.index) for p in store.pending(2)] == [(a, MANIFEST), (a, 0)]
    # An exclusion elsewhere lets the chunk query return more: still at most the limit.
    assert [(p.blob, p.index) for p in store.pending(1, {(b, 2)})] == [(a, MANIFEST)]
    assert [(p.blob, p.index) for p in store.pending(2, {(a, MANIFEST)})] == [(a, 0), (a, 1)]
    assert [(p.blob, p.index) for p in store.pending(5, {(a, MANIFEST), (a, 1)})] == [
        (a, 0), (a, 2), (b, MANIFEST), (b, 0), (b, 1)]
    store.mark_sent([(x, i) for x in (a, b) for i in (MANIFEST, 0, 1, 2)])
    assert store.pending(10) == [] and store.maybe_pending is False


def test_pending_expires_blobs_every_10_s(tmp_path: Path) -> None:
    store = BlobStore(Outbox(tmp_path / "o.db", compress=False), chunk_size=1024)
    kept = store.put(b"k" * 10)
    before = time.monotonic()
    assert [p.blob for p in store.pending(10)] == [kept, kept]
    assert before + 10.0 <= store._next_expiry <= time.monotonic() + 10.0
    late = store.put(b"l" * 10, expiry_s=-1.0)  # expired at once; the next check removes it
    assert [p.blob for p in store.pending(10)] == [kept, kept, late, late]
    assert store.expired == 0
    store._next_expiry = time.monotonic()  # the 10 s passed
    assert [p.blob for p in store.pending(10)] == [kept, kept] and store.expired == 1


def test_put_default_expiry_and_stored_meta(tmp_path: Path) -> None:
    import json
    store = BlobStore(Outbox(tmp_path / "o.db"), chunk_size=1024, expiry_s=60.0)
    blob = store.put(b"x" * 10, meta={"z": 1, "a": 2})
    created, expires, meta = store.db.execute(
        "SELECT created_ns, expires_ns, meta FROM blobs WHERE blob = ?", (blob,)).fetchone()
    assert expires == created + 60 * 10**9
    assert meta == json.dumps({"a": 2, "z": 1})  # canonical: the same content, the same row


def test_unescape_octal_escapes_only_whole() -> None:
    from agent.storage.mounts import _unescape
    assert _unescape("a\\040b\\134") == "a b\\"  # space, and a backslash ending the field
    assert _unescape("x\\04") == "x\\04"  # cut short: kept as written
    assert _unescape("\\a40\\9") == "\\a40\\9"  # not octal digits


MOUNTINFO_EDGES = "\n".join([
    "20 1 8:1 / / rw,relatime shared:1 - ext4 /dev/root rw,errors=remount-ro",
    "21 20 0:5 / /data ro - ext4",  # too short after the separator: skipped
    "22 20 0:6 / /data - ext4 /dev/x rw",  # too short before it (no options): skipped
    "23 20 0:7 / /data rw,nosuid - tmpfs - rw,size=1k,mode=755",  # source '-'
    "24 20 0:8 / /data/a\\040b rw - ext4 /dev/mmc\\134p1",  # no superblock options
    "25 20 0:9 / /data/a\\040b rw,noatime - f2fs /dev/mmcblk0p2 rw,lazytime",  # mounted over
])


def test_find_mount_edges() -> None:
    from agent.storage.mounts import Mount, find_mount
    assert find_mount(Path("/data/x"), MOUNTINFO_EDGES) == Mount(
        Path("/data"), "tmpfs", ("rw", "nosuid", "rw", "size=1k", "mode=755"), "-", "0:7")
    assert find_mount(Path("/data/a b/c"), MOUNTINFO_EDGES) == Mount(
        Path("/data/a b"), "f2fs", ("rw", "noatime", "rw", "lazytime"), "/dev/mmcblk0p2", "0:9")
    under = "\n".join(MOUNTINFO_EDGES.splitlines()[:-1])
    assert find_mount(Path("/data/a b"), under) == Mount(
        Path("/data/a b"), "ext4", ("rw",), "/dev/mmc\\p1", "0:8")
    assert find_mount(Path("/etc"), MOUNTINFO_EDGES) == Mount(
        Path("/"), "ext4", ("rw", "relatime", "rw", "errors=remount-ro"), "/dev/root", "8:1")


def test_report_reads_name_the_unreadable_file(tmp_path: Path) -> None:
    from agent.storage.report import (
        OutboxUnreadable,
        outbox_path,
        record_payloads,
        record_seqs,
        records_pending,
    )
    path = outbox_path(tmp_path)
    path.write_bytes(b"not an outbox, " * 100)
    for read in (lambda: record_seqs(tmp_path), lambda: record_seqs(tmp_path, "s"),
                 lambda: records_pending(tmp_path), lambda: record_payloads(tmp_path, "s")):
        with pytest.raises(OutboxUnreadable) as err:
            read()
        assert err.value.path == str(path)
        assert str(err.value).startswith(f"storage {path}: unreadable: file is not a database")
    path.unlink()
    import sqlite3
    with sqlite3.connect(path) as old:  # schema 2: marks still in the record rows
        old.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, stream TEXT, seq INTEGER)")
    old.close()
    with pytest.raises(OutboxUnreadable) as err:
        records_pending(tmp_path)
    assert str(err.value).startswith(
        f"storage {path}: unreadable: an outbox from an older agent (schema < 3): start the "
        "agent once to migrate it")


def test_records_pending_counts_until_ingested_by_default(tmp_path: Path) -> None:
    from agent.storage.report import outbox_path, records_pending
    box, ids = _box(outbox_path(tmp_path))
    box.mark_sent(ids)
    s1 = _seq(box, ids[0])
    box.mark_ingested("s", [(s1, s1)])
    box.flush_marks()
    undelivered = {("s", _seq(box, i)) for i in ids[1:]}
    assert records_pending(tmp_path) == undelivered
    assert records_pending(tmp_path, "sent") == set()


def test_marks_written_once_256_are_held(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", compress=False)
    ids = [r.id for r in box.append([PendingRecord("s", "t", lambda seq: b"x")] * 256)]
    box.mark_sent(ids[:255])
    assert box.marks_held == 255
    box.mark_sent(ids[255:])
    assert box.marks_held == 0  # the 256th wrote them
    seqs = [_seq(box, i) for i in ids]
    assert box.mark_ingested("s", [(seqs[0], seqs[254])]) == 255 and box.marks_held == 255
    assert box.mark_ingested("s", [(seqs[255], seqs[255])]) == 1 and box.marks_held == 0


def test_mark_ingested_error_names_the_file(tmp_path: Path) -> None:
    from agent.errors import StorageError
    box = Outbox(tmp_path / "o.db")
    box.db.close()
    with pytest.raises(StorageError) as err:
        box.mark_ingested("s", [(1, 2)])
    assert err.value.path == str(tmp_path / "o.db")
    assert str(err.value).startswith(
        f"storage {tmp_path / 'o.db'}: cannot record ingest ack: Cannot operate on a closed")


def test_requeue_unacked_spares_held_acks_and_marks_not_older(tmp_path: Path) -> None:
    box, ids = _box(tmp_path / "o.db")
    box.mark_sent(ids[:3])
    box.flush_marks()
    s1, s2 = _seq(box, ids[0]), _seq(box, ids[1])
    box.mark_ingested("s", [(s1, s2)])  # two acks held: spared
    box.mark_sent([ids[3]])
    at = box._sent_marks[ids[3]]
    assert box.requeue_unacked(at) == 1  # the third, sent earlier; the fourth at `at`: not older
    assert [r.id for r in box.fetch_unsent(0, 10)] == [ids[2], ids[4], ids[5]]
    assert box.requeue_unacked(at + 1) == 1
    assert [r.id for r in box.fetch_unsent(0, 10)] == [ids[2], ids[3], ids[4], ids[5]]


def _footprint(path: Path) -> int:
    total = 0
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), path.with_name(path.name + ".reserve")):
        if p.exists():
            st = os.stat(p)
            total += max(st.st_size, st.st_blocks * 512)
    return total


def test_usage_reports_the_files_on_disk(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", budget_bytes=4 * 1024 * 1024)[0]
    usage = box.usage()
    wal = os.stat(tmp_path / "o.db-wal")
    assert usage.wal_bytes == max(wal.st_size, wal.st_blocks * 512) > 0
    assert usage.budget_bytes == 4 * 1024 * 1024
    assert usage.disk_bytes == _footprint(tmp_path / "o.db") > usage.file_bytes


def test_prune_sent_counts_ingest_acks_and_flushes_idle_marks(tmp_path: Path) -> None:
    box, ids = _box(tmp_path / "o.db")
    box.mark_sent(ids)
    box.flush_marks()
    assert box.prune_sent(0) == 0 and _ids(box) == ids  # sent, not ingested: kept
    box.mark_sent(ids[:1])  # held again (a later PUBACK)
    assert box.prune_sent(16) == 0 and box.marks_held == 1  # written a moment ago: held
    box._last_write = time.monotonic() - 6.0  # MARKS_IDLE_S without a write
    assert box.prune_sent(16) == 0 and box.marks_held == 0
    box.mark_sent(ids[1:2])

    with pytest.raises(RuntimeError), box.transaction():  # a write that failed (rolled back,
        raise RuntimeError("write failed")  # its marks held again): the idle write waits
    box._last_write = time.monotonic() - 6.0
    assert box.prune_sent(16) == 0 and box.marks_held == 1


def test_quarantined_files_lists_the_databases_only(tmp_path: Path) -> None:
    from agent.storage.outbox import quarantined_files
    path = tmp_path / "o.db"
    path.write_bytes(b"garbage " * 512)
    box = Outbox(path)
    assert box.quarantined is not None
    for suffix in ("-wal", "-shm"):  # as SQLite leaves them beside a file it could open
        Path(f"{box.quarantined}{suffix}").write_bytes(b"x")
    assert quarantined_files(path) == [box.quarantined]


def test_decode_reads_a_two_byte_dictionary_id_and_names_its_errors() -> None:
    import zlib

    from agent.storage.codec import MAGIC, CorruptPayload, decode
    zdict, payload = b'{"schema": "x", "device": "d"}' * 4, b'{"schema": "x", "device": "e"}' * 3
    c = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=zdict)
    stored = MAGIC + (258).to_bytes(2, "big") + c.compress(payload) + c.flush()
    assert decode(stored, {258: zdict, 2: b"other"}) == payload
    with pytest.raises(CorruptPayload, match=r"^compressed with dictionary 258, which the file "
                                             r"lacks$"):
        decode(stored, {2: zdict})
    with pytest.raises(CorruptPayload, match=r"^does not decompress: Error -3 while "
                                             r"decompressing data: invalid block type$"):
        decode(MAGIC + b"\x00\x01\xff\xff\xff", {1: zdict})


def test_lock_holder_reads_ascii_digits_only(tmp_path: Path) -> None:
    from agent.storage.lock import lock_holder
    path = tmp_path / "lock"
    path.write_text("4242\n", encoding="ascii")
    assert lock_holder(path) == 4242
    path.write_bytes("\u0664\u0662\n".encode())  # Arabic-Indic digits: str.isdigit() and int() take them
    assert lock_holder(path) is None
    assert lock_holder(tmp_path / "missing") is None


def test_quarantine_moves_the_wal_and_shm_with_the_file(tmp_path: Path) -> None:
    """While another connection holds the file (so that the failed open's close does not fold
    the WAL into it), the corrupt file's WAL (unchanged) and shared memory go with it."""
    from agent.storage.outbox import quarantined_files
    path = tmp_path / "o.db"
    holder = Outbox(path, compress=False)
    holder.append([PendingRecord("s", "t", lambda seq: b"x" * 300) for _ in range(50)])
    holder.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    holder.append([PendingRecord("s", "t", lambda seq: b"y" * 300) for _ in range(5)])
    with open(path, "r+b") as f:  # pages 4-7 overwritten: quick_check fails
        f.seek(512 * 3)
        f.write(b"\xaa" * 512 * 4)
    wal, shm = Path(f"{path}-wal").read_bytes(), Path(f"{path}-shm").read_bytes()
    assert wal
    try:
        box = Outbox(path)
        assert box.quarantined is not None
        assert Path(f"{box.quarantined}-wal").read_bytes() == wal
        assert len(Path(f"{box.quarantined}-shm").read_bytes()) == len(shm)  # (readers' marks change)
        assert quarantined_files(path) == [box.quarantined]
        box.close()
    finally:
        holder.close()
