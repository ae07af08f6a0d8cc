"""Bytes written to storage per record (issue 20): the outbox's layout and compression at rest,
measured with the kernel's own count (/proc/self/io write_bytes), and what they must not break:
payloads on the wire unchanged, marks kept through a migration, seqs never reused."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from agent.bench.sync import Payloads, _disk_writes, live_writes, result_payload
from agent.storage.codec import MAGIC
from agent.storage.outbox import Outbox, PendingRecord
from agent.storage.report import read_report, record_payloads
from tests.outbox_probe import sent_not_acked

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io")


def _batched(path: Path, compress: bool, batches: int = 40) -> float:
    """The throughput pattern of bench sync: 100 records a commit, marked sent a batch at a
    time, the WAL fsynced; bytes written per payload byte, checkpoints included."""
    box = Outbox(path, until_ingested=False, compress=compress)
    payloads = Payloads(seed=5)
    before = _disk_writes()
    for _ in range(batches):
        stored = box.append([PendingRecord("cam0", "t", payloads)] * 100)
        box.mark_sent([r.id for r in stored])
        box.maybe_fsync(force=True)
    box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    written = _disk_writes() - before
    box.close()
    return written / payloads.bytes


def test_batched_writes_stay_under_twice_the_payload(tmp_path: Path) -> None:
    ratio = _batched(tmp_path / "a.db", compress=True)
    # Measured 0.85-1.0 (schema 2 wrote 6.7x): the goal is 2.0.
    assert 0 < ratio <= 2.0, ratio
    # Compression is what takes it under 2: without it the same layout writes more.
    assert _batched(tmp_path / "b.db", compress=False) > ratio * 1.5


def test_a_live_camera_writes_far_less_than_schema_2(tmp_path: Path) -> None:
    live = live_writes(tmp_path, seconds=30)
    # Measured 4.5-5.2x with 50 ms commits (schema 2: 73x); a commit of a record or two still
    # writes whole pages (docs/durability.md).
    assert live["records"] == 450 and 0 < live["write_amplification"] < 8, live


def test_payloads_are_compressed_at_rest_and_published_as_appended(tmp_path: Path) -> None:
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db")
    rng = random.Random(1)
    sent = {seq: result_payload(seq, rng) for seq in range(1, 41)}
    raw = [b"\xff\x00 not json", b"x" * 500, b"{}"]
    stored = box.append([PendingRecord("cam0", "t", lambda seq: sent[seq]) for _ in range(40)]
                        + [PendingRecord("raw", "t", lambda seq, i=i: raw[i]) for i in range(3)])
    assert [r.payload for r in stored[:40]] == [sent[s] for s in range(1, 41)]
    at_rest = dict(box.db.execute("SELECT seq, payload FROM records WHERE stream = 'cam0'")
                   .fetchall())
    assert all(bytes(p).startswith(MAGIC) for p in at_rest.values())
    assert sum(map(len, at_rest.values())) * 3 < sum(map(len, sent.values()))
    box.close()
    again = Outbox(state / "outbox.db")  # the dictionary is in the file
    assert {r.seq: r.payload for r in again.fetch_unsent(0, 100) if r.stream == "cam0"} == sent
    assert [r.payload for r in again.fetch_unsent(0, 100) if r.stream == "raw"] == raw
    assert record_payloads(state, "cam0") == sent  # the read-only report decompresses too
    again.close()


def test_schema_2_marks_move_to_the_marks_table(tmp_path: Path) -> None:
    # Raw SQL on purpose: a schema 2 file, which no storage API writes any more.
    db = sqlite3.connect(tmp_path / "outbox.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE streams (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
        INSERT INTO streams VALUES ('cam0', 3);
        CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,
            seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
            created_ns INTEGER NOT NULL, sent_ns INTEGER, acked_ns INTEGER,
            class TEXT NOT NULL DEFAULT 'result', priority INTEGER NOT NULL DEFAULT 60,
            UNIQUE (stream, seq));
        CREATE INDEX records_unsent ON records (id) WHERE sent_ns IS NULL;
        INSERT INTO records (stream, seq, topic, payload, qos, created_ns, sent_ns, acked_ns)
            VALUES ('cam0', 1, 't', x'7b7d', 1, 1, 5, 6), ('cam0', 2, 't', x'7b7d', 1, 1, 5, NULL),
                   ('cam0', 3, 't', x'7b7d', 1, 1, NULL, NULL);
        DELETE FROM records WHERE seq = 3;
    """)
    db.commit()
    db.close()
    box = Outbox(tmp_path / "outbox.db")
    assert box.backlog()[0] == 1 and sent_not_acked(box) == 1  # seq 2: sent, not acked
    assert box.fetch_unsent(0, 10) == []
    new = box.append([PendingRecord("cam0", "t", lambda seq: b"{}")])[0]
    assert new.seq == 4 and new.id == 4  # neither seq 3 nor the AUTOINCREMENT id 3 reused
    assert box.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "3"
    box.close()
    report = read_report(tmp_path, "ingested")
    assert report is not None and report.backlog == 2


def test_ids_and_seqs_are_not_reused_after_everything_is_deleted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", until_ingested=False)
    stored = box.append([PendingRecord("cam0", "t", lambda seq: b"{}")] * 5)
    box.mark_sent([r.id for r in stored])
    assert box.prune_sent(0) == 5
    box.close()
    again = Outbox(tmp_path / "o.db", until_ingested=False)
    new = again.append([PendingRecord("cam0", "t", lambda seq: b"{}")])[0]
    assert (new.id, new.seq) == (6, 6)


def test_marks_ride_on_the_next_commit_and_a_crash_only_republishes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path)
    stored = box.append([PendingRecord("cam0", "t", lambda seq: b'{"seq": %d}' % seq)] * 3)
    wal = box.wal.stat().st_size
    box.mark_sent([r.id for r in stored])
    assert box.mark_ingested("cam0", [(1, 2)]) == 2
    assert box.mark_ingested("cam0", [(1, 2)]) == 0  # counted once
    # No transaction of their own: the WAL did not grow, yet the outbox's view has them.
    assert box.wal.stat().st_size == wal
    assert box.backlog()[0] == 1 and box.fetch_unsent(0, 10) == []
    assert read_report(path.parent, "ingested").backlog == 3  # type: ignore[union-attr]
    # A crash before any other write (a second connection stands for the restarted agent):
    # the records are simply unsent again, to be published again (ingest dedupes).
    crashed = Outbox(path)
    assert [r.seq for r in crashed.fetch_unsent(0, 10)] == [1, 2, 3]
    crashed.db.close()
    # The next commit carries them.
    box.append([PendingRecord("cam0", "t", lambda seq: b'{"seq": %d}' % seq)])
    assert read_report(path.parent, "ingested").backlog == 2  # type: ignore[union-attr]
    assert [r.seq for r in box.fetch_unsent(0, 10)] == [4]
    box.close()


def test_delivered_records_are_pruned_in_steps_of_a_sixteenth_of_keep(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", until_ingested=False)

    def deliver(n: int) -> None:
        box.mark_sent([r.id for r in box.append([PendingRecord("cam0", "t", lambda s: b"{}")] * n)])

    deliver(170)
    assert box.prune_sent(160) == 0  # 10 beyond keep, within its sixteenth (10): kept
    deliver(1)
    assert box.prune_sent(160) == 11  # one more: down to keep
    assert box.backlog()[0] == 0 and box.db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 160
    assert box.prune_sent(0) == 160  # keep 0: every delivered record, at once
    box.close()


def test_records_acked_in_order_need_no_marks_rows(tmp_path: Path) -> None:
    """The delivered watermark: records acked in id order are covered by one number in the
    header (no marks row each); out-of-order acks keep their rows until the gap closes; every
    view (the outbox's, the report's, after a reopen, the prune) agrees."""
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db")

    def commit(n: int) -> list[int]:
        return [r.id for r in box.append([PendingRecord("cam0", "t", lambda s: b'{"a": 1}')] * n)]

    def rows() -> list[tuple[int, bool, bool]]:
        return [(int(i), s is not None, a is not None) for i, s, a in
                box.db.execute("SELECT id, sent_ns, acked_ns FROM marks ORDER BY id")]

    box.mark_sent(commit(5))
    box.mark_ingested("cam0", [(1, 3), (5, 5)])
    commit(1)  # the marks ride on this commit
    assert rows() == [(4, True, False), (5, True, True)]  # 1-3 below the watermark
    assert box.backlog()[0] == 2 and read_report(state, "ingested").backlog == 2  # type: ignore[union-attr]
    assert box.fetch_unsent(0, 10)[0].seq == 6  # 1-5 sent
    assert box.mark_ingested("cam0", [(1, 3)]) == 0  # already acked
    box.mark_ingested("cam0", [(4, 4)])  # the gap closes: the watermark passes 4 and 5
    box.flush_marks()
    assert [i for i, _, _ in rows() if i <= 4] == [] and box.backlog()[0] == 1
    box.close()
    again = Outbox(state / "outbox.db")
    assert again.backlog()[0] == 1 and [r.seq for r in again.fetch_unsent(0, 10)] == [6]
    assert again.requeue_unacked(2**62) == 0  # nothing below the watermark goes back
    assert again.prune_sent(0) == 5
    assert again.db.execute("SELECT MIN(id), COUNT(*) FROM records").fetchone() == (6, 1)
    again.close()
