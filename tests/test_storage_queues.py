"""The SQLite outbox and the bounded frame queue."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import StorageError
from agent.pipeline.queues import BoundedQueue, QueueClosed
from agent.storage.outbox import Outbox, PendingRecord


def _records(n: int, stream: str = "cam0") -> list[PendingRecord]:
    return [PendingRecord(stream, f"t/{stream}", lambda seq: f"seq={seq}".encode()) for _ in range(n)]


def test_seq_contiguous_and_never_reused_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db)
    box.append(_records(3))
    box.append(_records(2, "cam1"))
    box.close()
    box = Outbox(db, until_ingested=False)
    box.append(_records(2))
    rows = box.fetch_unsent(0, 100)
    assert [(r.stream, r.seq) for r in rows] == [
        ("cam0", 1), ("cam0", 2), ("cam0", 3), ("cam1", 1), ("cam1", 2), ("cam0", 4), ("cam0", 5)]
    assert rows[-1].payload == b"seq=5"
    box.mark_sent([r.id for r in rows[:3]])
    assert box.backlog()[0] == 4
    assert [r.seq for r in box.fetch_unsent(0, 100)][:2] == [1, 2]  # cam1 now first
    # deleting sent rows must not let a seq come back
    assert box.prune_sent(keep=0) == 3
    box.append(_records(1))
    assert box.last_seq("cam0") == 6
    assert box.integrity_ok()
    box.close()


def test_seq_never_comes_back_after_delivered_records_are_pruned(tmp_path: Path) -> None:
    # keep_delivered prunes the oldest delivered rows; when every row of a stream is gone, the
    # last seq must still come from the stream's counter, not from the rows that remain
    # (ingest would silently drop a reused seq as a duplicate).
    db = tmp_path / "outbox.db"
    box = Outbox(db, until_ingested=True)
    box.append(_records(5))
    box.append(_records(3, "cam1"))
    box.mark_ingested("cam0", [(1, 5)])
    box.mark_ingested("cam1", [(1, 2)])  # cam1 seq 3 stays undelivered
    assert box.prune_sent(keep=0) == 7
    box.close()
    box = Outbox(db, until_ingested=True)
    assert box.last_seq("cam0") == 5 and box.last_seq("cam1") == 3
    box.append([*_records(2), *_records(1, "cam1")])
    assert [(r.stream, r.seq) for r in box.fetch_unsent(0, 10)] == [
        ("cam1", 3), ("cam0", 6), ("cam0", 7), ("cam1", 4)]
    box.close()


_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["cam0", "cam1"]), st.integers(1, 5)),
    st.tuples(st.just("deliver"), st.sampled_from(["cam0", "cam1"]), st.integers(0, 10**6)),
    st.tuples(st.just("prune"), st.just(""), st.integers(0, 3)),
    st.tuples(st.just("reopen"), st.just(""), st.just(0))), max_size=25)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_seqs_per_stream_only_grow_through_prunes_and_restarts(
        ops: list[tuple[str, str, int]]) -> None:
    """Property: whatever is delivered, pruned or reopened in between, each stream's seqs are
    1, 2, 3, ... in commit order, none issued twice."""
    issued: dict[str, list[int]] = {"cam0": [], "cam1": []}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "outbox.db"
        box = Outbox(db, until_ingested=True)
        try:
            for op, stream, n in ops:
                if op == "append":
                    issued[stream] += [r.seq for r in box.append(_records(n, stream))]
                elif op == "deliver":
                    box.mark_ingested(stream, [(1, n)])
                elif op == "prune":
                    box.prune_sent(keep=n)
                else:
                    box.close()
                    box = Outbox(db, until_ingested=True)
        finally:
            box.close()
    for seqs in issued.values():
        assert seqs == list(range(1, len(seqs) + 1))


def test_failed_build_rolls_back_whole_batch(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")

    def boom(seq: int) -> bytes:
        raise ValueError("encode failed")

    with pytest.raises(ValueError):
        box.append([*_records(2), PendingRecord("cam0", "t", boom)])
    assert box.backlog()[0] == 0
    box.append(_records(1))
    assert box.fetch_unsent(0, 10)[0].seq == 1
    box.close()


def test_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="--state-dir"):
        Outbox(blocker / "sub" / "outbox.db")


def test_queue_drop_oldest_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue("frames", 2, "drop_oldest")
    assert q.put(1) and q.put(2)
    assert not q.put(3)
    assert q.stats.dropped == 1
    assert [q.get(0), q.get(0)] == [2, 3]


def test_queue_drop_newest_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue("frames", 1, "drop_newest")
    q.put(1)
    assert not q.put(2)
    assert q.get(0) == 1 and q.stats.dropped == 1


def test_queue_block_applies_back_pressure_then_drains_on_close() -> None:
    q: BoundedQueue[int] = BoundedQueue("frames", 1, "block")
    q.put(1)
    assert not q.put(2, timeout=0.05)  # timed out, nothing dropped
    assert q.stats.dropped == 0
    got: list[int] = []

    def consume() -> None:
        try:
            while True:
                item = q.get(1.0)
                if item is not None:
                    got.append(item)
        except QueueClosed:
            pass

    t = threading.Thread(target=consume)
    t.start()
    for i in range(2, 50):
        q.put(i)
    q.close()
    t.join(5)
    assert got == list(range(1, 50))
    with pytest.raises(QueueClosed):
        q.put(99)


def test_ingest_acks_and_requeue(tmp_path: Path) -> None:
    import time

    box = Outbox(tmp_path / "o.db", until_ingested=True)
    box.append(_records(5))
    ids = [r.id for r in box.fetch_unsent(0, 10)]
    box.mark_sent(ids)
    assert box.backlog()[0] == 5  # sent is not delivered until ingest says so
    assert box.mark_ingested("cam0", [(1, 2), (4, 4)]) == 3
    assert box.mark_ingested("cam0", [(1, 2)]) == 0  # acks are idempotent
    assert box.backlog()[0] == 2
    assert box.requeue_unacked(time.time_ns() + 1) == 2
    assert [r.seq for r in box.fetch_unsent(0, 10)] == [3, 5]
    box.close()
    broker_only = Outbox(tmp_path / "o.db", until_ingested=False)
    assert broker_only.backlog()[0] == 2
    broker_only.close()


def test_pipeline_state_commits_with_its_records_or_not_at_all(tmp_path: Path) -> None:
    """The analytics' open bucket is written in the records' transaction: a restart reads the
    state of exactly the records that were committed."""
    import sqlite3

    box = Outbox(tmp_path / "o.db")
    assert box.read_state("analytics/cam0") is None
    box.append(_records(2), state={"analytics/cam0": "after-2"})
    assert box.read_state("analytics/cam0") == "after-2"
    # Another writer takes the next seq: the commit fails, and so must the state with it.
    raw = sqlite3.connect(str(tmp_path / "o.db"))
    raw.execute("INSERT INTO records (stream, seq, topic, payload, qos, created_ns, class, "
                "priority) VALUES ('cam0', 3, 't', x'00', 1, 0, 'result', 60)")
    raw.commit()
    raw.close()
    with pytest.raises(StorageError):
        box.append(_records(1), state={"analytics/cam0": "after-3"})
    assert box.read_state("analytics/cam0") == "after-2"
    box.append([], state={"analytics/cam1": "only-state"})  # no records: the state alone
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.read_state("analytics/cam0") == "after-2"
    assert again.read_state("analytics/cam1") == "only-state"
    again.close()
