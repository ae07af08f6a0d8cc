"""The blob store and the outbox's corrupt-file path on real SQLite files: what the mutation
run (``make mutants``) found untested: manifests, chunking, ordering, exclusion, expiry,
requeue after the ack timeout, quarantine names, and the errors a user sees."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from agent.core.contract.shard import MANIFEST, manifest_payload
from agent.errors import StorageError
from agent.storage import outbox as outbox_mod
from agent.storage.blobs import BlobStore
from agent.storage.lock import LOCK_NAME, StateDirLock, lock_holder
from agent.storage.outbox import Outbox
from tests.outbox_probe import sent_not_acked


def test_manifest_payload_is_the_contract_message() -> None:
    payload = manifest_payload(blob="ab", size=10, chunk_size=4, chunk_count=3, kind="clip",
                               content_type="video/mp4", created_ns=5, expires_ns=None,
                               meta={"stream": "cam0"})
    assert payload == (b'{"blob":"ab","chunk_count":3,"chunk_size":4,"content_type":"video/mp4",'
                       b'"created_ns":5,"expires_ns":null,"kind":"clip","meta":{"stream":"cam0"},'
                       b'"schema":{"id":"lepton.shard-manifest","version":1},"size":10}')


def test_put_chunks_and_pending_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    with pytest.raises(ValueError, match=r"^chunk_size must be at least 1 KiB$"):
        BlobStore(box, chunk_size=1023)
    store = BlobStore(box, chunk_size=1024)
    assert store.chunk_size == 1024 and store.expiry_s == 7 * 24 * 3600 and store.expired == 0
    assert not store.maybe_pending and store.pending(10) == []
    with pytest.raises(ValueError, match=r"^a blob needs at least one byte$"):
        store.put(b"")
    data = bytes(range(256)) * 9  # 2304 bytes: chunks of 1024, 1024, 256
    before = time.time_ns()
    blob = store.put(data, kind="clip", content_type="video/mp4", meta={"stream": "cam0"},
                     expiry_s=60)
    assert blob == hashlib.sha256(data).hexdigest() and store.maybe_pending
    assert store.put(data) == blob  # the same content waiting already: a no-op
    parts = store.pending(10)
    assert [(p.blob, p.index) for p in parts] == [(blob, MANIFEST), (blob, 0), (blob, 1), (blob, 2)]
    assert [p.data for p in parts[1:]] == [data[:1024], data[1024:2048], data[2048:]]
    assert {(p.chunk_count, p.size, p.kind, p.content_type) for p in parts} == {
        (3, 2304, "clip", "video/mp4")}
    manifest = json.loads(parts[0].data)
    assert (manifest["chunk_count"], manifest["chunk_size"], manifest["meta"], manifest["kind"]) == (
        3, 1024, {"stream": "cam0"}, "clip")
    assert before <= manifest["created_ns"] <= time.time_ns()
    assert manifest["expires_ns"] == manifest["created_ns"] + 60 * 10**9
    assert [p.index for p in store.pending(2)] == [MANIFEST, 0]
    assert [p.index for p in store.pending(1)] == [MANIFEST]
    assert [p.index for p in store.pending(3, exclude={(blob, MANIFEST), (blob, 0)})] == [1, 2]
    # higher priority blobs first, then the oldest
    low = store.put(b"low" * 400, record_class="telemetry")
    high = store.put(b"high" * 300, record_class="event")
    order = [p.blob for p in store.pending(20) if p.index == MANIFEST]
    assert order == sorted([blob, low, high], key=lambda b: -{blob: box.priority("shard"),
                                                                low: box.priority("telemetry"),
                                                                high: box.priority("event")}[b])
    store.mark_sent([(blob, MANIFEST), (blob, 0)])
    assert [p.index for p in store.pending(20) if p.blob == blob] == [1, 2]
    never = store.put(b"n" * 10, expiry_s=0)
    assert json.loads(next(p.data for p in store.pending(50) if p.blob == never))["expires_ns"] is None


def test_acks_requeue_and_expiry(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    store = BlobStore(box, chunk_size=1024)
    a = store.put(b"a" * 3000)
    b = store.put(b"b" * 3000)
    assert store.on_ack([a, "0" * 64], {b: [(0, 1)]}) == 1
    assert [(p.blob, p.index) for p in store.pending(10)] == [(b, MANIFEST), (b, 2)]
    sent_at = time.time_ns()
    store.mark_sent([(b, MANIFEST), (b, 2)])
    assert store.pending(10) == []
    assert not store.maybe_pending
    assert store.requeue_unacked(sent_at) == 0
    assert store.requeue_unacked(time.time_ns() + 1) == 2 and store.maybe_pending
    assert [(p.blob, p.index) for p in store.pending(10)] == [(b, MANIFEST), (b, 2)]
    old = store.put(b"old" * 500, expiry_s=-1.0)  # expired a second before it was stored
    assert store.expire() == 1 and store.expired == 1
    assert all(p.blob != old for p in store.pending(10))
    assert store.expire() == 0 and store.expired == 1
    reopened = BlobStore(box)
    assert reopened.maybe_pending  # blobs left in the file: the uplink must look


def test_blob_store_errors_name_the_file(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    store = BlobStore(box, chunk_size=1024)
    box.db.execute("DROP TABLE blob_chunks")
    with pytest.raises(StorageError) as err:
        store.put(b"x" * 2000)
    assert str(err.value) == (f"storage {tmp_path / 'o.db'}: cannot store blob: no such table: "
                              "blob_chunks (fix: free space on the state directory's filesystem)")


def test_corrupt_outbox_is_quarantined_under_a_new_name(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for _ in range(2):
        path.write_bytes(b"this is not a database" * 200)
        box = Outbox(path)
        assert box.quarantined is not None and box.quarantined.read_bytes().startswith(b"this is not")
        box.close()
    kept = sorted(p.name for p in tmp_path.glob("o.db.corrupt-*"))
    assert len(kept) == 2 and kept[0].startswith("o.db.corrupt-" + stamp[:8])
    assert any(name.endswith("-2") for name in kept) or kept[0][:-2] != kept[1][:-2]
    fresh = Outbox(path)
    assert fresh.quarantined is None and fresh.last_seq("cam0") > 10**12  # seqs restart above the old
    fresh.close()


def test_corruption_is_told_from_other_errors(tmp_path: Path) -> None:
    assert outbox_mod._is_corruption(sqlite3.DatabaseError("file is not a database"))
    assert outbox_mod._is_corruption(sqlite3.DatabaseError("database disk image is malformed"))
    assert not outbox_mod._is_corruption(sqlite3.OperationalError("unable to open database file"))
    blocked = tmp_path / "dir"
    blocked.mkdir()
    (blocked / "o.db").mkdir()  # a directory where the file should be
    with pytest.raises(StorageError) as err:
        Outbox(blocked / "o.db")
    assert str(err.value) == (f"storage {blocked / 'o.db'}: cannot open outbox database: unable to "
                              "open database file (fix: check the state directory is writable and "
                              "has free space)")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError) as err:
        Outbox(tmp_path / "file" / "sub" / "o.db")
    assert str(err.value) == (f"storage {tmp_path / 'file' / 'sub'}: cannot create state directory: "
                              "Not a directory (fix: pass --state-dir with a writable directory)")
    not_db = tmp_path / "junk"
    not_db.write_bytes(b"x" * 4096)
    with pytest.raises(sqlite3.DatabaseError) as real:
        sqlite3.connect(not_db).execute("PRAGMA quick_check").fetchone()
    assert outbox_mod._is_corruption(real.value)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    assert not outbox_mod._is_corruption(full)
    named = sqlite3.DatabaseError("anything")
    named.sqlite_errorname = "SQLITE_CORRUPT_INDEX"  # type: ignore[attr-defined]
    assert outbox_mod._is_corruption(named)
    assert outbox_mod._is_corruption(outbox_mod.CorruptDatabase("integrity check failed: x"))


def test_state_dir_lock_names_the_holder_and_releases(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = StateDirLock(state)
    assert (first.state_dir, first.path, first.held, LOCK_NAME) == (state, state / "agent.lock", False,
                                                                    "agent.lock")
    first.release()  # not held: nothing to do
    with first as held:
        assert held is first and first.held
        assert (state / "agent.lock").read_text() == f"{os.getpid()}\n"
        assert lock_holder(state / "agent.lock") == os.getpid()
        with pytest.raises(StorageError) as err:
            StateDirLock(state).acquire()
        assert str(err.value) == (
            f"storage {state}: another agent (pid {os.getpid()}) is running on state directory "
            f"{state}; two agents on one outbox would assign the same seqs (fix: stop it first "
            f"(systemctl stop lepton-agent, or kill {os.getpid()}), or give this one another "
            "--state-dir)")
        (state / "agent.lock").write_text("")  # a holder that never wrote its pid
        with pytest.raises(StorageError) as err:
            StateDirLock(state).acquire()
        assert "another agent (another process) is running" in str(err.value)
        assert "or kill it), or give" in str(err.value)
    assert not first.held and (state / "agent.lock").read_text() == ""
    second = StateDirLock(state).acquire()
    assert second.held
    second.release()
    second.release()
    assert not second.held


def test_lock_holder_reads_only_a_pid(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    assert lock_holder(path) is None  # missing
    for text, pid in (("123\n", 123), ("  77 ", 77), ("", None), ("12a", None), ("-5", None),
                      ("\xff", None)):
        path.write_bytes(text.encode("latin-1"))
        assert lock_holder(path) == pid, text


def test_lock_file_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError) as err:
        StateDirLock(tmp_path / "file" / "state").acquire()
    assert str(err.value) == (f"storage {tmp_path / 'file' / 'state' / 'agent.lock'}: cannot create the "
                              "state directory's lock file: Not a directory (fix: pass --state-dir "
                              "with a writable directory)")


def test_commit_errors_say_whether_the_disk_or_another_writer_is_to_blame(tmp_path: Path) -> None:
    from agent.storage.outbox import PendingRecord

    def rec() -> PendingRecord:
        return PendingRecord("cam0", "t/cam0", lambda seq: b"x")

    path = tmp_path / "o.db"
    first, second = Outbox(path), Outbox(path)  # a second writer: both think seq 1 is next
    first.append([rec()])
    with pytest.raises(StorageError) as err:
        second.append([rec()])
    assert str(err.value).startswith(f"storage {path}: cannot commit records: UNIQUE constraint failed")
    assert str(err.value).endswith("; another process has written to this outbox (fix: run one agent "
                                   "per state directory and nothing else that writes its outbox.db)")
    first.db.execute("DROP TABLE records")
    with pytest.raises(StorageError) as err:
        first.append([rec()])
    assert str(err.value) == (f"storage {path}: cannot commit records: no such table: records (fix: "
                              "free space on the state directory's filesystem or lower [outbox] "
                              "budget_bytes)")


def test_lock_dirs_mode_and_a_filesystem_without_flock(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    state = tmp_path / "a" / "b" / "state"  # parents are made
    lock = StateDirLock(state).acquire()
    umask = os.umask(0)
    os.umask(umask)
    assert (state / "agent.lock").stat().st_mode & 0o777 == 0o644 & ~umask
    lock.release()
    opened: list[int] = []
    real_open = os.open

    def tracking_open(*args: object, **kw: object) -> int:
        fd = real_open(*args, **kw)  # type: ignore[arg-type]
        opened.append(fd)
        return fd

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    # Fault injection: an NFS mount without lock support is not available to the tests.
    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(StorageError) as err:
        StateDirLock(state).acquire()
    assert str(err.value) == (f"storage {state / 'agent.lock'}: cannot lock the state directory: No "
                              "locks available (fix: use a local filesystem that supports flock for "
                              "--state-dir)")
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(opened[-1])  # the descriptor was closed


def test_quarantine_keeps_every_file_of_the_same_second(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock is pinned so that three quarantines fall in one second.
    monkeypatch.setattr(outbox_mod.time, "strftime", lambda fmt: "20261201T000000")
    path = tmp_path / "o.db"
    for i in range(3):
        path.write_bytes(b"junk %d" % i * 1000)
        Outbox(path).close()
    base = "o.db.corrupt-20261201T000000"
    for i, name in enumerate((base, base + "-2", base + "-3")):
        assert (tmp_path / name).read_bytes() == b"junk %d" % i * 1000


def test_fetch_keeps_qos_and_mark_sent_errors_name_the_file(tmp_path: Path) -> None:
    from agent.storage.outbox import PendingRecord

    box = Outbox(tmp_path / "o.db")
    box.append([PendingRecord("s", "t", lambda seq: b"a", qos=0),
                PendingRecord("s", "t", lambda seq: b"b", qos=1)])
    assert [(r.seq, r.qos, r.payload) for r in box.fetch_unsent(0, 10)] == [(1, 0, b"a"), (2, 1, b"b")]
    assert [r.seq for r in box.fetch_unsent(1, 10)] == [2]
    box.mark_sent([1])
    assert [r.seq for r in box.fetch_unsent(0, 10)] == [2] and sent_not_acked(box) == 1
    assert box.requeue_unacked(time.time_ns() + 1) == 1 and sent_not_acked(box) == 0
    box.db.execute("DROP TABLE records")
    box.mark_sent([2])  # held in memory: written with the next write transaction
    with pytest.raises(StorageError) as err:
        box.flush_marks()
    assert str(err.value) == (f"storage {tmp_path / 'o.db'}: cannot record sent and acked marks: "
                              "no such table: records")


def test_blob_defaults_chunk_counts_and_outbox_reads(tmp_path: Path) -> None:
    from agent.storage.outbox import PendingRecord

    box = Outbox(tmp_path / "o.db", until_ingested=False)
    store = BlobStore(box, chunk_size=1024)
    blob = store.put(b"z" * 1025)  # one byte past a chunk: two chunks
    parts = store.pending(10)
    assert [(p.kind, p.content_type, p.chunk_count) for p in parts] == [("snapshot", "image/jpeg", 2)] * 3
    assert box.db.execute("SELECT priority FROM blobs WHERE blob = ?", (blob,)).fetchone()[0] == \
        box.priority("shard")
    exact = store.put(b"y" * 2048)
    assert max(p.index for p in store.pending(10) if p.blob == exact) == 1  # exactly two chunks
    assert box.backlog() == (0, None)
    before = time.time_ns()
    stored = box.append([PendingRecord("s", "t/s", lambda seq: b"p%d" % seq, qos=0),
                         PendingRecord("s", "t/s", lambda seq: b"p%d" % seq)])
    count, age = box.backlog()
    assert count == 2 and age is not None and 0 <= age < (time.time_ns() - before) / 1e9 + 1
    assert box.fetch_ids([]) == []
    again = box.fetch_ids([stored[1].id, stored[0].id, 999])
    assert [(r.id, r.stream, r.seq, r.topic, r.payload, r.qos) for r in again] == [
        (stored[0].id, "s", 1, "t/s", b"p1", 0), (stored[1].id, "s", 2, "t/s", b"p2", 1)]
    box.mark_sent([stored[0].id])
    assert box.backlog()[0] == 1  # delivery to the broker: sent is delivered
    assert [r.seq for r in box.fetch_ids([stored[0].id, stored[1].id])] == [2]
    assert box.integrity_ok()


def test_full_disk_errors_are_told_apart() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert outbox_mod._is_full(full)
    assert not outbox_mod._is_full(sqlite3.OperationalError("disk I/O error"))
    named = sqlite3.OperationalError("whatever")
    named.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    assert outbox_mod._is_full(named)
    other = sqlite3.OperationalError("database or disk is full")
    other.sqlite_errorname = "SQLITE_IOERR"  # type: ignore[attr-defined]
    assert not outbox_mod._is_full(other)  # the name decides when there is one
